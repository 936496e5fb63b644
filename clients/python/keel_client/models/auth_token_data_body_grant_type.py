from enum import StrEnum


class AuthTokenDataBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
