"""Migration 0008_mail on a database that already holds an account and its session (both backends)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from keel import db
from tests.conftest import Backend

BEFORE = "0007_idempotency_keys"
users = sa.table(
    "users",
    *(sa.column(name, sa.String()) for name in ("username", "email", "username_key", "email_key", "password_hash")),
    sa.column("id", sa.Uuid()),
    sa.column("created_at", db.UtcDateTime()),
    sa.column("updated_at", db.UtcDateTime()),
)
refresh_tokens = sa.table(
    "refresh_tokens",
    sa.column("id", sa.Uuid()),
    sa.column("token_hash", sa.String()),
    sa.column("family_id", sa.Uuid()),
    sa.column("user_id", sa.Uuid()),
    sa.column("created_at", db.UtcDateTime()),
    sa.column("expires_at", db.UtcDateTime()),
)


async def test_existing_accounts_are_unverified_and_keep_their_sessions_and_the_migration_reverses(
    empty_backend: Backend,
) -> None:
    engine = db.create_engine(empty_backend.database_url)
    user_id, now = uuid.uuid4(), db.utcnow()
    try:
        await db.upgrade(engine, BEFORE)
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().values(
                    id=user_id,
                    username="ada",
                    email="ada@example.com",
                    username_key="ada",
                    email_key="ada@example.com",
                    password_hash="x",
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(
                refresh_tokens.insert().values(
                    id=user_id, token_hash="h", family_id=user_id, user_id=user_id, created_at=now, expires_at=now
                )
            )
        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT email_verified FROM users"))).scalar_one() in (False, 0)
            # the column was added in place: no rebuild of users cascaded to the sessions
            assert (await conn.execute(sa.text("SELECT count(*) FROM refresh_tokens"))).scalar_one() == 1
            assert (await conn.execute(sa.text("SELECT count(*) FROM mail_outbox"))).scalar_one() == 0

        def downgrade(connection: Connection) -> None:
            config = db.alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, BEFORE)

        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        await db.upgrade(engine)  # and up again
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM refresh_tokens"))).scalar_one() == 1
    finally:
        await engine.dispose()
