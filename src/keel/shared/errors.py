"""The one error shared-state backends raise, so callers handle an outage without importing redis; the breaker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import sqlalchemy.exc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# seconds after a failed call in which Redis is not tried again: on a dead link (timeouts, not refusals) every call
# would otherwise wait out the client's timeout, 2 s (keel.redis), on a path that should take a millisecond
BREAKER_SECONDS: Final = 1.0


class BackendUnavailable(Exception):
    """Redis cannot be reached now; the caller degrades (fail open, bypass the cache) and carries on."""


# what a database or Redis outage raises (the pool's TimeoutError included; asyncpg's refused connection comes
# through unwrapped as a ConnectionError): nothing a client did wrong, and a retry shortly may succeed
OUTAGES: Final = (
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    BackendUnavailable,
    ConnectionError,
    TimeoutError,
)


@contextmanager
def outage_as_unavailable() -> Iterator[None]:
    """Re-raise Redis connection failures and timeouts as BackendUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise BackendUnavailable(str(exc)) from exc


class Breaker:
    """Fails calls at once for BREAKER_SECONDS after one failed: for callers that have a cheap way around Redis."""

    def __init__(self) -> None:
        self._try_at = 0.0  # monotonic time before which Redis is not tried

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around one Redis call: raises BackendUnavailable at once while open, and opens on an outage."""
        if time.monotonic() < self._try_at:
            raise BackendUnavailable("Redis failed a moment ago; not tried")
        try:
            with outage_as_unavailable():
                yield
        except BackendUnavailable:
            self._try_at = time.monotonic() + BREAKER_SECONDS
            raise
