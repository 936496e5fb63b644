"""Every shared-state test runs on both backends: `embedded` (in-process) and `scaled` (real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from keel.shared import Backends, open_backends

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once

OpenBackends = Callable[[str | None], Awaitable[Backends]]


@pytest.fixture
async def open_instance() -> AsyncIterator[OpenBackends]:
    """Open more Backends (another "instance"); all are closed after the test."""
    opened: list[Backends] = []

    async def open_one(redis_url: str | None) -> Backends:
        backends = await open_backends(redis_url)
        opened.append(backends)
        return backends

    yield open_one
    for backends in opened:
        await backends.close()


@pytest.fixture(params=["embedded", "scaled"])
def backends_url(request: pytest.FixtureRequest) -> str | None:
    """None for the in-process backends, the test Redis for the scaled ones."""
    if request.param == "scaled":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


@pytest.fixture
async def backends(backends_url: str | None, open_instance: OpenBackends) -> Backends:
    return await open_instance(backends_url)


async def drop_pubsub_connections(admin: Redis) -> None:
    """Close the pub/sub connections to `admin`'s Redis database: another test process's, on another database of
    the same server, keep theirs."""
    database = admin.connection_pool.connection_kwargs.get("db", 0)
    for client in await admin.client_list(_type="pubsub"):
        if int(client["db"]) == database:
            await admin.client_kill_filter(_id=client["id"])


@pytest.fixture
async def redis_admin(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client to inspect and disturb the test Redis from outside the backends."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()
