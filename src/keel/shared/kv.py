"""TTL key-value store: the cache, the JWT denylist and single-use WebSocket tickets."""

from __future__ import annotations

import math
import time
from typing import Protocol

from redis.asyncio import Redis

from keel.shared.errors import outage_as_unavailable
from keel.shared.expiring import Clock, ExpiringDict


class KeyValueStore(Protocol):
    """Bytes under string keys, each with a TTL. The Redis store raises BackendUnavailable during an outage."""

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds (> 0)."""
        ...

    async def take(self, key: str) -> bytes | None:
        """Atomically get and delete `key`: of concurrent takers, exactly one gets the value."""
        ...

    async def delete(self, *keys: str) -> None:
        """Remove `keys`; absent ones are ignored."""
        ...


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:  # also rejects NaN
        raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")


class InProcessKeyValueStore:
    """The embedded store: one process's memory; expired entries are dropped lazily and by sweeps."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._items: ExpiringDict[bytes] = ExpiringDict(clock)

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, or None when absent or expired."""
        return self._items.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds (> 0)."""
        _check_ttl(ttl)
        self._items.set(key, value, ttl)

    async def take(self, key: str) -> bytes | None:
        """Atomically get and delete `key` (no await in between, so no other task can interleave)."""
        return self._items.pop(key)

    async def delete(self, *keys: str) -> None:
        """Remove `keys`; absent ones are ignored."""
        for key in keys:
            self._items.delete(key)


class RedisKeyValueStore:
    """Keys live in Redis as `prefix + key`, shared by every instance."""

    def __init__(self, redis: Redis, prefix: str = "keel:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, or None when absent or expired."""
        with outage_as_unavailable():
            return bytes_or_none(await self._redis.get(self._prefix + key))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds (> 0), rounded up to whole milliseconds."""
        _check_ttl(ttl)
        with outage_as_unavailable():
            await self._redis.set(self._prefix + key, value, px=math.ceil(ttl * 1000))

    async def take(self, key: str) -> bytes | None:
        """Atomically get and delete `key` (GETDEL, Redis >= 6.2)."""
        with outage_as_unavailable():
            return bytes_or_none(await self._redis.getdel(self._prefix + key))

    async def delete(self, *keys: str) -> None:
        """Remove `keys`; absent ones are ignored."""
        if keys:
            with outage_as_unavailable():
                await self._redis.delete(*(self._prefix + key for key in keys))


def bytes_or_none(value: object) -> bytes | None:
    """A Redis reply as bytes (or None), checked: the clients are made with decode_responses off."""
    if value is None or isinstance(value, bytes):
        return value
    raise TypeError(f"expected bytes from Redis, got {type(value).__name__}")  # decode_responses must stay off
