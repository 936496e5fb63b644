"""Redis client factories: short timeouts, so an outage costs callers seconds, never minutes."""

from __future__ import annotations

from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 2.0
MAX_CONNECTIONS: Final = 64


def _connection_options() -> dict[str, Any]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_keepalive": True,
        "decode_responses": False,
    }


def create_redis(url: str) -> Redis:
    """A pooled client for `url` with short timeouts and one quick retry on connection errors."""
    pool = BlockingConnectionPool.from_url(
        url,
        **_connection_options(),
        # blocking: a burst beyond the pool waits briefly for a free connection instead of failing at once
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECT_TIMEOUT,
        # PING a connection idle this long before reusing it, so a dead one is replaced, not failed on
        health_check_interval=30,
        # one retry replaces a pooled connection the server dropped; more would only stretch an outage. Not after a
        # timeout (redis-py's default retries those too): the server may have run the command and be slow to answer,
        # and running a script, an INCR or an XADD twice would count a request twice or publish a message twice
        retry=Retry(
            ExponentialWithJitterBackoff(cap=0.2, base=0.02), retries=1, supported_errors=(RedisConnectionError,)
        ),
    )
    return Redis.from_pool(pool)


def create_pubsub_pool(url: str) -> ConnectionPool:
    """A pool for the broker's pub/sub connection: no retries and no health check of its own.

    redis-py would otherwise reconnect (and resubscribe) behind the broker's back; the broker must see every
    disconnect, because subscribers may have missed messages during it (SPEC §10).
    """
    return ConnectionPool.from_url(
        url, **_connection_options(), retry=Retry(NoBackoff(), retries=0, supported_errors=()), health_check_interval=0
    )
