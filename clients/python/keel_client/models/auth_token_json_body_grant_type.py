from enum import StrEnum


class AuthTokenJsonBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
