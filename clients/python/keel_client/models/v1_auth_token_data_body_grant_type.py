from enum import StrEnum


class V1AuthTokenDataBodyGrantType(StrEnum):
    PASSWORD = "password"

    def __str__(self) -> str:
        return str(self.value)
