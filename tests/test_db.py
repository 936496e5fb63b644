"""The database engine: the embedded writer queue (one SQLite writer at a time per process, queued in asyncio), and
the statement caches a transaction pooler needs off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keel import db

WRITE = text("INSERT INTO t (n) VALUES (1)")


@pytest.fixture
async def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AsyncEngine]:
    monkeypatch.setattr(db, "WRITE_LOCK_TIMEOUT", 0.3)  # SQLite's own busy_timeout stays 5 s
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (n INTEGER)"))
    yield engine
    await engine.dispose()


async def test_a_second_writer_queues_in_the_process_not_in_sqlite(engine: AsyncEngine) -> None:
    async def write(*, commit: bool = True) -> None:
        async with engine.connect() as conn:
            await conn.execute(WRITE)
            if commit:
                await conn.commit()

    async with engine.connect() as first:
        await first.execute(WRITE)  # a write transaction, left open
        # another task's writer waits on keel's queue, whose timeout fires first (SQLite's busy_timeout is 5 s)
        with pytest.raises(PoolTimeoutError):
            await asyncio.create_task(write())
        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await first.commit()  # the end of the first transaction lets the next writer in
        await asyncio.wait_for(waiting, 1)


async def test_a_rollback_a_forgotten_transaction_or_a_failed_task_frees_the_queue(engine: AsyncEngine) -> None:
    async def rolled_back() -> None:
        async with engine.connect() as conn:
            await conn.execute(WRITE)
            await conn.rollback()

    async def forgotten() -> None:
        async with engine.connect() as conn:
            await conn.execute(WRITE)  # closed without commit or rollback

    orphans: list[AsyncConnection] = []

    async def failed() -> None:
        orphans.append(conn := await engine.connect())
        await conn.execute(WRITE)
        raise RuntimeError("the task dies holding its transaction")

    await asyncio.create_task(rolled_back())
    await asyncio.create_task(forgotten())
    with pytest.raises(RuntimeError):
        await asyncio.create_task(failed())
    await orphans[0].close()  # from another task: only the dead task's own end can have given the lock back
    async with asyncio.timeout(1), engine.begin() as conn:  # a leaked lock would wait out the 0.3 s queue timeout
        await conn.execute(WRITE)
        assert await conn.scalar(text("SELECT count(*) FROM t")) == 1


async def test_reads_do_not_queue_behind_a_writer(engine: AsyncEngine) -> None:
    async with engine.connect() as writer, engine.connect() as reader:
        await writer.execute(WRITE)
        assert await reader.scalar(text("SELECT count(*) FROM t")) == 0  # WAL: the reader sees the last commit
        await writer.rollback()


async def test_a_connection_given_back_after_its_commit_is_not_rolled_back_again(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollbacks: list[object] = []
    rollback = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        rollbacks.append(self)
        await rollback(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    async with engine.connect() as conn:  # a write, committed
        await conn.execute(WRITE)
        await conn.commit()
    async with engine.connect() as conn:  # a read: Python's sqlite3 began no transaction for it
        await conn.scalar(text("SELECT count(*) FROM t"))
        await conn.commit()
    assert rollbacks == []  # SQLAlchemy's default reset rolled back on each return: a round trip for nothing
    async with engine.connect() as conn:  # a write left open is still rolled back, by SQLAlchemy's Connection
        await conn.execute(WRITE)
    assert len(rollbacks) == 1


async def test_a_connection_given_back_inside_a_transaction_is_rolled_back(engine: AsyncEngine) -> None:
    def write_behind_sqlalchemys_back(conn: Connection) -> None:
        # a DBAPI connection written through and handed back: only the pool's reset can end its transaction
        raw = conn.engine.raw_connection()
        cursor = raw.cursor()
        cursor.execute("INSERT INTO t (n) VALUES (2)")
        cursor.close()
        raw.close()

    async with engine.connect() as conn:
        await conn.run_sync(write_behind_sqlalchemys_back)
    # kept, its open transaction would hold SQLite's write lock (this write would time out) or commit with this
    async with asyncio.timeout(1), engine.begin() as conn:
        await conn.execute(WRITE)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [1]


@pytest.mark.parametrize(
    ("query", "sizes"),
    [
        ("", {}),
        ("?prepared_statement_cache_size=0", {"prepared_statement_cache_size": 0, "statement_cache_size": 0}),
        ("?statement_cache_size=0", {"prepared_statement_cache_size": 0, "statement_cache_size": 0}),
        ("?statement_cache_size=500&ssl=require", {"statement_cache_size": 500}),
    ],
)
def test_turning_off_either_statement_cache_turns_off_both(query: str, sizes: dict[str, int]) -> None:
    url, found = db.statement_cache_sizes(make_url(f"postgresql+asyncpg://keel@db/keel{query}"))
    assert found == sizes
    assert not set(url.query) & set(db.STATEMENT_CACHES)  # asyncpg gets numbers through connect_args instead


def test_a_statement_cache_size_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="statement_cache_size must be a whole number"):
        db.statement_cache_sizes(make_url("postgresql+asyncpg://keel@db/keel?statement_cache_size=lots"))


async def test_a_server_that_ends_a_connection_is_an_outage_and_the_pool_recovers(pg_url: str) -> None:
    # PostgreSQL's admin_shutdown (57P01, what a fast stop sends every session): asyncpg raises it as a plain
    # PostgresError, which SQLAlchemy left a bare DBAPIError (a 500); keel's engine makes it an OperationalError (503)
    # and drops the connection. The victim is inside a statement when it is ended, so that the FATAL is its answer
    # (ended while idle, the next statement meets "connection is closed" or, if the close is not read yet,
    # asyncpg's "another operation is in progress", which keel's engine treats alike)
    engine = db.create_engine(pg_url)
    try:
        async with engine.connect() as victim, engine.connect() as admin:
            pid = (await victim.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            sleeping = asyncio.ensure_future(victim.execute(text("SELECT pg_sleep(10)")))
            running = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND query LIKE '%pg_sleep%'")
            for _ in range(100):
                if (await admin.execute(running, {"pid": pid})).scalar_one():
                    break
                await asyncio.sleep(0.02)
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(OperationalError, match="terminating connection"):
                await sleeping
        async with engine.connect() as conn:  # the dead connection was discarded, not handed out again
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
