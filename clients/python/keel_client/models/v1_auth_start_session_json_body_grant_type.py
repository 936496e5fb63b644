from enum import StrEnum


class V1AuthStartSessionJsonBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
