"""Engine and session factories, the declarative Base, and the schema-version check."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, MetaData, TypeDecorator, event
from sqlalchemy.engine import URL, Connection, Dialect, ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.util import await_

from keel import metrics

# stable constraint names, so migrations can refer to them on both PostgreSQL and SQLite
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


POOL_TIMEOUT = 5  # seconds a request may wait for a pooled connection before it gets 503
CONNECT_TIMEOUT = 5  # seconds a new PostgreSQL connection may take
STATEMENT_TIMEOUT = 30  # seconds a PostgreSQL statement may take: migrations and commands
# what the serving engine allows a connection attempt or a statement: a PostgreSQL that stopped answering (frozen, or
# behind a network partition that drops packets, where nothing is refused) costs a request at most this, then 503;
# below SPEC §10's 5 s, which also holds the HTTP work around it
REQUEST_STATEMENT_TIMEOUT = 4
WRITE_LOCK_TIMEOUT = 5  # seconds a SQLite writer may queue, as busy_timeout allowed before: then 503
# SQLAlchemy's per-connection cache of asyncpg prepared statements, and asyncpg's own: `DATABASE_URL` query parameters
STATEMENT_CACHES = ("prepared_statement_cache_size", "statement_cache_size")
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
# SQLSTATEs of a server that is going away, starting up or full: class 08 (connection exception), 57P01-57P03
# (admin_shutdown, crash_shutdown, cannot_connect_now) and 53300 (too_many_connections)
_OUTAGE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends: SQLite stores naive values and hands them back naive."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(url: str, *, pool_size: int = 10, statement_timeout: float = STATEMENT_TIMEOUT) -> AsyncEngine:
    """An engine for `url`: pooled asyncpg for PostgreSQL, WAL-mode aiosqlite for SQLite.

    `hide_parameters`: a statement's error message never carries its bind values (user names, emails, message
    bodies), so a logged traceback holds no one's data. `statement_timeout` bounds each PostgreSQL statement and
    connection attempt (the latter at most CONNECT_TIMEOUT).
    """
    engine = _create_engine(url, pool_size, statement_timeout)
    _count_checkouts(engine)
    event.listen(engine.sync_engine, "handle_error", _outage_as_operational_error)
    return engine


def _outage_as_operational_error(context: ExceptionContext) -> OperationalError | None:
    """A server that is shutting down, still recovering or not answering in time is an outage (503), like one that
    refuses connections, and the connection it happened on is dropped, not pooled again.

    SQLAlchemy's asyncpg dialect maps only a few asyncpg errors to DBAPI classes; the rest, the "the database system
    is not yet accepting connections" of a PostgreSQL that is restarting among them, become a bare DBAPIError,
    which reached the 500 handler (tests/faults/test_postgres.py found it).
    """
    original = context.original_exception
    if isinstance(original, TimeoutError):
        # a statement past its timeout (asyncpg raises asyncio's, which SQLAlchemy passes on unwrapped): the server
        # may be frozen and asyncpg's cancel of the statement still pending. Dropped at once: SQLAlchemy's
        # invalidation first tries a graceful close for 2 s, which a frozen server never answers
        connection = context.connection
        if connection is not None and not connection.invalidated and not connection.closed:
            terminate = getattr(connection.connection.driver_connection, "terminate", None)
            if terminate is not None:
                terminate()
    elif isinstance(original.__cause__, asyncpg.InternalClientError):
        # the server ended an idle session (admin_shutdown, as a fast stop does) and asyncpg read its FATAL but not
        # yet the socket's close: the connection is stuck in "another operation is in progress"
        pass
    else:
        state = getattr(original, "sqlstate", None)
        if not isinstance(state, str) or not state.startswith(_OUTAGE_STATES):
            return None
    # the server ends the session after these, but asyncpg may not have seen the socket close yet
    context.is_disconnect = True
    if isinstance(context.sqlalchemy_exception, OperationalError):
        return None
    return OperationalError(context.statement, context.parameters, original, hide_parameters=True)


def _create_engine(url: str, pool_size: int, statement_timeout: float) -> AsyncEngine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # a request waiting this long for a connection gets 503 instead of queueing for SQLAlchemy's default 30 s
        engine = create_async_engine(
            url,
            connect_args={"timeout": 5},
            pool_timeout=POOL_TIMEOUT,
            hide_parameters=True,
            pool_reset_on_return=None,  # _reset_sqlite does it, only when there is something to reset
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "reset", _reset_sqlite)
        _queue_sqlite_writers(engine)
        return engine
    pg_url, statement_caches = statement_cache_sizes(make_url(url))
    return create_async_engine(
        pg_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=POOL_TIMEOUT,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args={
            "timeout": min(CONNECT_TIMEOUT, statement_timeout),
            "command_timeout": statement_timeout,
            "server_settings": {"application_name": "keel"},
            **statement_caches,
        },
    )


def statement_cache_sizes(url: URL) -> tuple[URL, dict[str, int]]:
    """`url` without its statement-cache parameters, and their sizes as numbers; if either is 0, both are.

    Behind PgBouncer in transaction mode each transaction may run on another server connection, where a named
    prepared statement is missing or, named `__asyncpg_stmt_1__` by another client too, already exists. With both
    caches off every statement is unnamed: asyncpg parses it and runs it in one exchange (Parse, Describe, Flush,
    then Bind, Execute, Sync: no Sync, so no pooler switches connections in between) inside the transaction
    SQLAlchemy began, and nothing outlives it. Either cache alone is not enough: SQLAlchemy's off still names
    statements (asyncpg's cache decides that), and asyncpg's off with SQLAlchemy's on would reuse an unnamed
    statement in a later transaction. asyncpg takes its size as an `int`, which a URL cannot carry.
    """
    sizes: dict[str, int] = {}
    for name in STATEMENT_CACHES:
        if name in url.query:
            value = url.query[name]
            if not isinstance(value, str) or not value.isdigit():
                raise ValueError(f"DATABASE_URL: {name} must be a whole number, got {value!r}")
            sizes[name] = int(value)
    if 0 in sizes.values():
        sizes = dict.fromkeys(STATEMENT_CACHES, 0)
    return url.difference_update_query(STATEMENT_CACHES), sizes


def _count_checkouts(engine: AsyncEngine) -> None:
    """keel_db_pool_in_use follows the pool's checkouts, on both backends; a pool event is a plain call, and each
    worker's figure must be written by that worker for `--workers N` to add up (keel.metrics)."""
    in_use = metrics.DB_POOL_IN_USE
    event.listen(engine.sync_engine, "checkout", lambda *_: in_use.inc())
    event.listen(engine.sync_engine, "checkin", lambda *_: in_use.dec())


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing at once
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _reset_sqlite(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
    """Roll a returned SQLite connection back only if it is inside a transaction.

    SQLAlchemy's default rolls back every connection it is given back, even one whose transaction just committed:
    on aiosqlite that is a round trip to the connection's thread and a wake-up of the event loop for nothing, one
    in five of a login's (bench/login.py). Python's sqlite3 begins a transaction only before a write, and commit
    or rollback ends it, so `in_transaction` (aiosqlite's, read without a round trip) says whether one is open: a
    write left uncommitted still holds SQLite's write lock and is rolled back as before. A driver connection
    without the attribute is rolled back, as SQLAlchemy would.
    """
    if not state.asyncio_safe:  # garbage collection of a lost connection: nothing may be awaited, as by default
        return
    if getattr(record.driver_connection, "in_transaction", True):
        dbapi_connection.rollback()


class _WriterQueue:
    """One writer at a time per process, queued on an asyncio lock rather than in SQLite's busy handler.

    SQLite lets one connection write; the others poll under busy_timeout, sleeping up to 100 ms between tries,
    which put the p99 of 8 concurrent publishers at 440-740 ms (BENCHMARKS.md). Queued here, a writer waits only
    for the writes ahead of it. A task takes the lock at its first write statement and gives it back when that
    transaction commits or rolls back, or at the latest when the task ends, so no path can leak it. The embedded
    backend is one process by design (`--workers` needs Redis), so a process-wide lock covers every writer.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None

    def take(self, _conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        """before_cursor_execute: a write waits for its turn (in SQLAlchemy's greenlet, on the loop's thread)."""
        task = asyncio.current_task()
        if task is None or task is self._holder or not statement.lstrip()[:7].upper().startswith(_WRITES):
            return
        await_(self._acquire())
        self._holder = task
        task.add_done_callback(self._release)

    def end(self, _conn: Connection) -> None:
        """commit / rollback: the transaction that wrote is over."""
        self._release(asyncio.current_task())

    async def _acquire(self) -> None:
        try:
            async with asyncio.timeout(WRITE_LOCK_TIMEOUT):
                await self._lock.acquire()
        except TimeoutError:
            # SQLAlchemy's own timeout (a 503, like a busy database); asyncio's would invalidate the connection
            raise PoolTimeoutError(f"waited {WRITE_LOCK_TIMEOUT} s for the database's write lock") from None

    def _release(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None and task is self._holder:
            self._holder = None
            task.remove_done_callback(self._release)
            self._lock.release()


def _queue_sqlite_writers(engine: AsyncEngine) -> None:
    queue = _WriterQueue()
    event.listen(engine.sync_engine, "before_cursor_execute", queue.take)
    event.listen(engine.sync_engine, "commit", queue.end)
    event.listen(engine.sync_engine, "rollback", queue.end)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Alembic's config for the migrations shipped inside the package, so any working directory works."""
    config = Config()
    config.set_main_option("script_location", "keel:migrations")
    config.set_main_option("file_template", "%%(year)d-%%(month).2d-%%(day).2d_%%(slug)s")
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent)."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def schema_revisions(engine: AsyncEngine) -> tuple[set[str], set[str]]:
    """(the database's revisions, the code's heads): equal when the schema is current."""

    def current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        database = await connection.run_sync(current)
    return database, set(ScriptDirectory.from_config(alembic_config()).get_heads())


def known_revisions() -> set[str]:
    """Every revision this code has a migration for: a database at one of them is behind, not ahead."""
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
