"""Shared state behind one small interface, twice: in-process (the embedded default) and Redis (scale-out).

`open_backends(None)` needs no services; `open_backends(url)` shares the broker, store, read cache and scripts
across every instance on that Redis. Redis failures surface as BackendUnavailable, so callers never import redis.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keel.redis import create_pubsub_pool, create_redis
from keel.shared.atomic import InProcessScriptRunner, RedisScriptRunner, ScriptRunner
from keel.shared.broker import Broker, InProcessBroker, RedisBroker
from keel.shared.cache import InProcessReadCache, ReadCache, RedisReadCache
from keel.shared.errors import BackendUnavailable
from keel.shared.kv import InProcessKeyValueStore, KeyValueStore, RedisKeyValueStore

__all__ = ["BackendUnavailable", "Backends", "Health", "open_backends"]

Health = Literal["ok", "error", "disabled"]

PING_TIMEOUT: Final = 1.0


@dataclass(frozen=True)
class Backends:
    """The broker, TTL store, read cache and script runner of one instance, and the Redis client if any."""

    broker: Broker
    kv: KeyValueStore
    cache: ReadCache
    scripts: ScriptRunner
    redis: Redis | None

    async def ping(self) -> Health:
        """Redis' state for /readyz: "ok", "error" (unreachable or slow), or "disabled" (in-process)."""
        if self.redis is None:
            return "disabled"
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError):
            return "error"
        return "ok"

    async def close(self) -> None:
        """Stop the broker and close every Redis connection."""
        await self.broker.close()
        if self.redis is not None:
            await self.redis.aclose()


async def open_backends(redis_url: str | None) -> Backends:
    """In-process backends when `redis_url` is None, else Redis ones; Redis need not be up yet."""
    if redis_url is None:
        return Backends(
            InProcessBroker(), InProcessKeyValueStore(), InProcessReadCache(), InProcessScriptRunner(), None
        )
    redis = create_redis(redis_url)
    broker = RedisBroker(redis, create_pubsub_pool(redis_url))
    cache = RedisReadCache(redis)
    broker.on_resume(cache.retry_soon)  # invalidations that failed during the outage go out now
    return Backends(broker, RedisKeyValueStore(redis), cache, RedisScriptRunner(redis), redis)
