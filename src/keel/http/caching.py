"""Conditional, cached GETs (SPEC §6): a strong ETag on every such response, 304 for a matching If-None-Match.

The ETag is a hash of the JSON body, so it is strong: it changes with any byte of the body. The compression
layer tells encoded variants apart by suffixing it (keel.http.compression). A hot read is cached under its
scope (keel.shared.cache) as the ETag and the body together, so a hit serves, or 304s, with no database work.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar.datastructures import ResponseHeader
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import metrics
from keel.shared import BackendUnavailable
from keel.shared.cache import ReadCache

_encoder = msgspec.json.Encoder()
CACHE_HITS: Final = metrics.CACHE_LOOKUPS.labels("hit")
CACHE_MISSES: Final = metrics.CACHE_LOOKUPS.labels("miss")
CACHE_ERRORS: Final = metrics.CACHE_LOOKUPS.labels("error")
ETAG_LENGTH: Final = 34  # '"' + 32 hex digits + '"'
# bearer-authenticated data: no shared cache may keep it, and a client revalidates (cheaply, by ETag) before reuse
CACHE_CONTROL: Final = "private, no-cache"
NOT_MODIFIED: Final = {
    304: ResponseSpec(None, description="Not modified: the If-None-Match tag is current", generate_examples=False)
}
# for OpenAPI (and the clients generated from it) only: the handlers set these headers; a value gives the schema
VALIDATOR_HEADERS: Final = [
    ResponseHeader(
        name="ETag", documentation_only=True, value='"0f…"', description="Strong validator; send it in If-None-Match"
    ),
    ResponseHeader(name="Cache-Control", documentation_only=True, value=CACHE_CONTROL, description=CACHE_CONTROL),
]


def entity_tag(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def is_current(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match names `etag` (RFC 9110 §13.1.2: weak comparison, `*` matches anything)."""
    if if_none_match is None:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


class Loads:
    """Concurrent misses of one cache entry share one load: the first starts it, the others await its result.

    Every entry expires after its TTL (10 s), and a hot one is then missed by every request in flight at once: each
    ran its own load, so 64 connections on the cached v2 message page ran 64 queries and encodings on the loop
    together, ~600 ms during which every request waited (bench/http_goals.py: p99 240-290 ms against p50 13 ms,
    22x; `GET /users/me` on PostgreSQL at 256 connections queued on the pool past wrk's 2 s timeout). Keyed by
    the scope's version the lookup returned, so a request that saw a later write never shares an older load.
    The load runs in a task of its own: a waiter that is cancelled (its client left) does not cancel the others'.
    """

    def __init__(self) -> None:
        self._running: dict[tuple[str, str, bytes], asyncio.Task[tuple[str, bytes]]] = {}

    async def once(
        self, key: tuple[str, str, bytes], load: Callable[[], Awaitable[tuple[str, bytes]]]
    ) -> tuple[str, bytes]:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: tuple[str, str, bytes], task: asyncio.Task[tuple[str, bytes]]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone, and asyncio would log it as never retrieved


@dataclass(frozen=True, slots=True)
class Reads:
    """Conditional JSON reads for one request: handlers get it as `reads: ConditionalReads`.

    It opens the database session `load` reads with only on a miss, so a handler needs no `db_session` of its own:
    a cache hit costs no session checkout (a cache hit of `GET /users/me`, in-process: 500 to 585 → 186 to 204 µs
    of CPU, `/protected` 130, most of it the task group Litestar then ran two dependencies in, which
    keel.http.deps.SequentialDependencies has since removed for every route).
    """

    cache: ReadCache
    if_none_match: str | None
    sessionmaker: async_sessionmaker[AsyncSession]
    loads: Loads

    async def json(
        self, load: Callable[[AsyncSession], Awaitable[Any]], *, scope: str, key: str | None
    ) -> Response[Any]:
        """`load(session)`'s JSON with its ETag, or 304; with a `key`, from the cache while no write changed
        `scope`."""
        lookup = None
        if key is not None:
            try:
                lookup = await self.cache.get(scope, key)
            except BackendUnavailable:  # Redis is down: read through (SPEC §10)
                CACHE_ERRORS.inc()
            else:
                (CACHE_MISSES if lookup.value is None else CACHE_HITS).inc()
        if lookup is not None and lookup.value is not None:
            etag, body = lookup.value[:ETAG_LENGTH].decode(), lookup.value[ETAG_LENGTH:]
        elif lookup is not None and key is not None:
            version = lookup.version
            etag, body = await self.loads.once((scope, key, version), lambda: self._fill(load, scope, key, version))
        else:  # no key, or Redis is down: read through
            etag, body = await self._load(load)
        headers = {"etag": etag, "cache-control": CACHE_CONTROL}
        if is_current(self.if_none_match, etag):
            return Response(content=b"", status_code=304, headers=headers)
        return Response(content=body, media_type=MediaType.JSON, headers=headers)

    async def _load(self, load: Callable[[AsyncSession], Awaitable[Any]]) -> tuple[str, bytes]:
        async with self.sessionmaker() as session:
            body = _encoder.encode(await load(session))
        return entity_tag(body), body

    async def _fill(
        self, load: Callable[[AsyncSession], Awaitable[Any]], scope: str, key: str, version: bytes
    ) -> tuple[str, bytes]:
        etag, body = await self._load(load)
        # stamped with the version read before load(): a write that raced it hides this entry
        with suppress(BackendUnavailable):
            await self.cache.put(scope, key, etag.encode() + body, version)
        return etag, body
