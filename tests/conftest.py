"""Fixtures shared by the whole suite: the two backends, settings, app and client.

Storage-touching tests take the `backend` fixture and run twice: `embedded` (SQLite in tmp_path, the
in-process broker/store/limiter) and `scaled` (real PostgreSQL and Redis). Without CI=true the scaled half
skips with one line when a service is unreachable; with CI=true that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
from litestar import Litestar
from litestar.testing import AsyncTestClient
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy.ext.asyncio import create_async_engine

from keel import db
from keel.main import create_app
from keel.settings import Settings
from tests.servers import XDIST_INDEX, XDIST_WORKER


def _own(url: str) -> str:
    """`url` made this test process's own under pytest-xdist (`make test` runs two): worker gw<n> gets the database
    `<name>_gw<n>` and the Redis database n below the one named, so workers never empty each other's data."""
    if XDIST_WORKER is None:
        return url
    parts = urlsplit(url)
    if parts.scheme.startswith("redis"):
        return urlunsplit(parts._replace(path=f"/{int(parts.path.lstrip('/') or 0) - XDIST_INDEX}"))
    return urlunsplit(parts._replace(path=f"{parts.path}_{XDIST_WORKER}"))


TEST_DATABASE_URL = _own(
    os.environ.get("KEEL_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/keel_test")
)
TEST_REDIS_URL = _own(os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_JWT_SECRET = "test-secret-that-is-at-least-32-bytes-long"
UNLIMITED = "100000/s burst 100000"  # tests of other features must never meet the limiter


def unavailable(what: str, error: Exception) -> None:
    """Fail under CI, skip elsewhere, with one line saying why."""
    reason = f"{what} unreachable ({type(error).__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(f"{reason}; set CI=true to make this a failure")


def pg_admin_dsn(url: str, database: str = "postgres") -> str:
    """A plain asyncpg DSN for `url`'s server, pointed at another database."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return urlunsplit(parts._replace(path=f"/{database}"))


async def recreate_pg_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(pg_admin_dsn(url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_pg_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(pg_admin_dsn(url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A fresh, migrated PostgreSQL database for this run."""
    try:
        asyncio.run(recreate_pg_database(TEST_DATABASE_URL))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable(f"PostgreSQL at {TEST_DATABASE_URL}", exc)
    asyncio.run(migrate(TEST_DATABASE_URL))
    return TEST_DATABASE_URL


def flush(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis at KEEL_TEST_REDIS_URL, flushed for this run."""
    try:
        flush(TEST_REDIS_URL)
    except redis.RedisError as exc:
        unavailable(f"Redis at {TEST_REDIS_URL}", exc)
    return TEST_REDIS_URL


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    redis_url: str | None


async def empty_tables(url: str) -> None:
    conn = await asyncpg.connect(pg_admin_dsn(url, urlsplit(url).path.lstrip("/")), timeout=5)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        names = ", ".join(f'"{t["tablename"]}"' for t in tables if t["tablename"] != "alembic_version")
        if names:
            await conn.execute(f"TRUNCATE {names} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["embedded", "scaled"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Both deployment shapes, each empty: a fresh migrated SQLite file, or emptied PostgreSQL and Redis."""
    if request.param == "scaled":
        pg, redis_test_url = request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")
        asyncio.run(empty_tables(pg))
        flush(redis_test_url)
        return Backend("scaled", pg, redis_test_url)
    url = f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"
    asyncio.run(migrate(url))
    return Backend("embedded", url, None)


def make_settings(backend: Backend, **overrides: object) -> Settings:
    """Test settings: explicit values win over the developer's environment and .env; the limiter never trips."""
    values: dict[str, object] = {
        "DATABASE_URL": backend.database_url,
        "REDIS_URL": backend.redis_url,
        "KEEL_JWT_SECRET": TEST_JWT_SECRET,
        "KEEL_RATE_LIMIT": UNLIMITED,
        "KEEL_AUTH_RATE_LIMIT": UNLIMITED,
        "KEEL_LOG_FORMAT": "json",
        "KEEL_LOG_LEVEL": "warning",
    }
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return make_settings(backend)


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app, base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture(params=["embedded", "scaled"])
def empty_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A database with no schema at all: a SQLite path that does not exist yet, or a new PostgreSQL database."""
    if request.param == "embedded":
        yield Backend("embedded", f"sqlite+aiosqlite:///{tmp_path / 'var' / 'empty.db'}", None)
        return
    base: str = request.getfixturevalue("pg_url")
    url = base.rsplit("/", 1)[0] + f"/keel_empty_{uuid.uuid4().hex[:8]}"
    asyncio.run(recreate_pg_database(url))
    try:
        yield Backend("scaled", url, request.getfixturevalue("redis_url"))
    finally:
        asyncio.run(drop_pg_database(url))


# a name for loopback that is not "localhost" or "127.0.0.1", which pages (Swagger UI among them) may treat specially
BROWSER_HOST = "keel.test"


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, driven by Playwright (no `playwright install`); BROWSER_HOST resolves to
    127.0.0.1 in it."""
    path = shutil.which("chromium")
    if path is None:
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it", pytrace=False)
        pytest.skip("chromium not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", f"--host-resolver-rules=MAP {BROWSER_HOST} 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            launched.close()
