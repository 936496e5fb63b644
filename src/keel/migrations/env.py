"""Alembic environment: runs on the connection keel hands over (keel.db.upgrade), or on DATABASE_URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import keel.accounts.models
import keel.idempotency.models
import keel.identity.models
import keel.mail.models
import keel.realtime.models  # noqa: F401
from keel.db import Base, create_engine
from keel.settings import load_settings

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    # batch mode lets ALTERs work on SQLite, which rebuilds the table for them
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=connection.dialect.name == "sqlite"
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    engine = create_engine(load_settings().database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if (given := config.attributes.get("connection")) is not None:
    run_on(given)
else:
    asyncio.run(run_from_settings())
