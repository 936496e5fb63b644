"""The one error shared-state backends raise, so callers handle an outage without importing redis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class BackendUnavailable(Exception):
    """Redis cannot be reached now; the caller degrades (fail open, bypass the cache) and carries on."""


@contextmanager
def outage_as_unavailable() -> Iterator[None]:
    """Re-raise Redis connection failures and timeouts as BackendUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise BackendUnavailable(str(exc)) from exc
