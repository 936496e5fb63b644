"""When to try again: exponential backoff with jitter, and what a refusal's `Retry-After` asks for."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# statuses worth another try: the limiter, a server busy or being replaced, a proxy without a healthy upstream
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class Backoff:
    """Delays that double from `initial` up to `maximum`, each drawn from the upper half of its step so that
    many clients cut off at once do not come back at once. `reset` after a connection that worked."""

    initial: float = 0.5
    maximum: float = 30.0
    attempts: int = field(default=0, init=False)

    def next_delay(self, at_least: float = 0.0) -> float:
        step = min(self.maximum, self.initial * 2.0**self.attempts)
        self.attempts += 1
        return max(at_least, step / 2 + random.uniform(0, step / 2))

    def reset(self) -> None:
        self.attempts = 0


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds a refusal's `Retry-After` asks the client to wait (keel sends whole seconds); 0 when absent."""
    value = headers.get("retry-after", "")
    return float(value) if value.isdigit() else 0.0


def problem(body: bytes | bytearray) -> dict[str, Any]:
    """A refusal's problem+json body, or `{}` when it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


class Retryable(Exception):  # a signal inside the reconnect loops, never raised to callers
    """A connection attempt failed in a way the next one may not; wait at least `at_least` seconds."""

    def __init__(self, reason: str, at_least: float = 0.0) -> None:
        super().__init__(reason)
        self.at_least = at_least
