"""Read cache for hot GETs: entries stamped with their scope's version, so a write anywhere hides them all at once.

A scope is what one write changes (one channel with its message pages; the channel list). A reader takes the
scope's version together with the entry, in one round trip, and an entry counts only while it carries the
version that is current. A writer replaces the version after its commit. So an entry filled by a read that
raced a write carries the version from before the write and is never served (the stale-fill race of
delete-on-write caches): a read after a write, on any instance, never sees the old value. No locks, no
compare-and-set, one command per lookup.

Versions are random tokens rather than counters, so a version can never come back (no ABA after a restart).
Entries live TTL seconds. During a Redis outage, reads bypass the cache (BackendUnavailable) and a version that
could not be replaced is replaced before this instance reads the cache again, and when the broker's feed resumes;
whatever another instance might still hold from before the outage expires within TTL (SPEC §10's 15 s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Final, Protocol

from redis.asyncio import Redis

from keel.shared.errors import BackendUnavailable, Breaker
from keel.shared.expiring import Clock, ExpiringDict
from keel.shared.kv import bytes_or_none

log = logging.getLogger(__name__)

TTL: Final = 10.0  # seconds an entry is served at most: the staleness bound if an invalidation is lost
_NO_VERSION: Final = b""  # a scope never written since the cache started


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a lookup found: the entry (None on a miss) and the scope's version to stamp a new entry with."""

    value: bytes | None
    version: bytes


class ReadCache(Protocol):
    """Bytes under (scope, key). The Redis cache raises BackendUnavailable from get/put during an outage."""

    async def get(self, scope: str, key: str) -> Lookup:
        """The entry under (scope, key) if it is current, and the scope's version either way."""
        ...

    async def put(self, scope: str, key: str, value: bytes, version: bytes) -> None:
        """Store `value`, stamped with the `version` its lookup returned (before the value was read)."""
        ...

    async def invalidate(self, *scopes: str) -> None:
        """Hide every entry of `scopes` (after the write that changed them committed). Never raises an outage."""
        ...


def new_version() -> bytes:
    return os.urandom(8).hex().encode()


class InProcessReadCache:
    """The embedded cache: one process's memory."""

    def __init__(self, clock: Clock = time.monotonic, ttl: float = TTL) -> None:
        self._ttl = ttl
        self._versions: dict[str, bytes] = {}  # one per scope ever written: per channel, like its row
        self._entries: ExpiringDict[tuple[bytes, bytes]] = ExpiringDict(clock)  # "scope key" -> (version, value)

    async def get(self, scope: str, key: str) -> Lookup:
        """The entry under (scope, key) if it is current, and the scope's version either way."""
        version = self._versions.get(scope, _NO_VERSION)
        entry = self._entries.get(f"{scope} {key}")
        return Lookup(entry[1] if entry is not None and entry[0] == version else None, version)

    async def put(self, scope: str, key: str, value: bytes, version: bytes) -> None:
        """Store `value`, stamped with the `version` its lookup returned."""
        self._entries.set(f"{scope} {key}", (version, value), self._ttl)

    async def invalidate(self, *scopes: str) -> None:
        """Hide every entry of `scopes`."""
        for scope in scopes:
            self._versions[scope] = new_version()


class RedisReadCache:
    """Entries and versions in Redis (`cache:v:<scope>`, `cache:e:<scope> <key>`), shared by every instance.

    Version keys have no TTL (one per written scope), so Redis must not evict keys without one: the default
    `noeviction` and the `volatile-*` policies are fine.
    """

    def __init__(self, redis: Redis, prefix: str = "keel:cache:", ttl: float = TTL) -> None:
        self._redis = redis
        # a miss costs only a database read, so after a failure the cache is not tried for a moment
        self._breaker = Breaker()
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        # scope -> invalidations not yet made (they failed, or are in flight); replaced before the next read
        self._unversioned: dict[str, int] = {}
        self._retry: asyncio.Task[None] | None = None

    async def get(self, scope: str, key: str) -> Lookup:
        """The entry under (scope, key) if it is current, and the scope's version: one MGET."""
        await self._replace_versions()  # this instance's own writes first: it must read them back
        with self._breaker.call():
            replies = await self._redis.mget(self._version_key(scope), self._entry_key(scope, key))
        version, entry = bytes_or_none(replies[0]) or _NO_VERSION, bytes_or_none(replies[1])
        if entry is not None:
            stamp, _, value = entry.partition(b"|")  # versions are hex: the first "|" ends the stamp
            if stamp == version:
                return Lookup(value, version)
        return Lookup(None, version)

    async def put(self, scope: str, key: str, value: bytes, version: bytes) -> None:
        """Store `value` for TTL, stamped with the `version` its lookup returned."""
        with self._breaker.call():
            await self._redis.set(self._entry_key(scope, key), version + b"|" + value, px=self._ttl_ms)

    async def invalidate(self, *scopes: str) -> None:
        """Give `scopes` new versions (one MSET); during an outage, remember them for later."""
        for scope in scopes:
            self._unversioned[scope] = self._unversioned.get(scope, 0) + 1
        try:
            await self._replace_versions()
        except BackendUnavailable as exc:
            log.warning("cache invalidation deferred until Redis answers: %s", exc)

    def retry_soon(self) -> None:
        """Replace the deferred versions now (the broker's feed resumed, so Redis answers again)."""
        if self._unversioned and (self._retry is None or self._retry.done()):
            self._retry = asyncio.get_running_loop().create_task(self.invalidate())

    async def _replace_versions(self) -> None:
        if not self._unversioned:
            return
        made = dict(self._unversioned)
        with self._breaker.call():
            await self._redis.mset({self._version_key(scope): new_version() for scope in made})
        for scope, count in made.items():
            if self._unversioned.get(scope) == count:  # else a later invalidation is still in flight, or failed
                del self._unversioned[scope]

    def _version_key(self, scope: str) -> str:
        return f"{self._prefix}v:{scope}"

    def _entry_key(self, scope: str, key: str) -> str:
        return f"{self._prefix}e:{scope} {key}"
