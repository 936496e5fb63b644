from enum import StrEnum


class AuthStartSessionDataBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
