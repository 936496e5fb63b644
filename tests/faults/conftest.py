"""Private services for fault tests: a PostgreSQL cluster and a Redis of their own, which a test may stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from tests.conftest import IN_CI, migrate, pg_admin_dsn
from tests.servers import PostgresProcess, RedisProcess, postgres_bin, scaled_env


@pytest.fixture
def private_pg() -> Iterator[PostgresProcess]:
    """A migrated, empty `keel` database on a PostgreSQL server only this test uses."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        if IN_CI:
            pytest.fail("PostgreSQL's server is not installed; .ci/run installs Debian's postgresql", pytrace=False)
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql)")
    with PostgresProcess(bin_dir) as server:

        async def create() -> None:
            conn = await asyncpg.connect(pg_admin_dsn(server.url), timeout=5)
            try:
                await conn.execute("CREATE DATABASE keel")
            finally:
                await conn.close()
            await migrate(server.url)

        asyncio.run(create())
        yield server


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


@pytest.fixture
def scaled(pg_url: str, redis_url: str) -> dict[str, str | None]:
    """Settings for instances of one service on the suite's (emptied) PostgreSQL and (flushed) Redis."""
    return scaled_env(pg_url, redis_url)
