from enum import StrEnum


class ReadinessChecksAdditionalProperty(StrEnum):
    DISABLED = "disabled"
    ERROR = "error"
    OK = "ok"

    def __str__(self) -> str:
        return str(self.value)
