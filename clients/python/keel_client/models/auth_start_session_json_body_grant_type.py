from enum import StrEnum


class AuthStartSessionJsonBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
