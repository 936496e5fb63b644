from enum import StrEnum


class V1AuthTokenJsonBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
