"""Accounts' migrations on databases that already hold users (both backends)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from keel import db
from keel.accounts.passwords import PasswordHasher
from keel.main import create_app
from tests.conftest import Backend, make_settings
from tests.factories import PASSWORD, bearer, log_in

BEFORE_CANONICAL_NAMES = "0003_channels"
users = sa.table(
    "users",
    sa.column("id", sa.Uuid()),
    sa.column("username", sa.String()),
    sa.column("email", sa.String()),
    sa.column("password_hash", sa.String()),
    sa.column("created_at", db.UtcDateTime()),
    sa.column("updated_at", db.UtcDateTime()),
)


async def _users_made_before_canonical_names(url: str, *rows: tuple[str, str]) -> None:
    engine = db.create_engine(url)
    hasher = PasswordHasher(workers=1)
    try:
        await db.upgrade(engine, BEFORE_CANONICAL_NAMES)
        password_hash = await hasher.hash(PASSWORD)
        first = db.utcnow()
        async with engine.begin() as conn:
            await conn.execute(
                users.insert(),
                [
                    {
                        "id": uuid.uuid4(),
                        "username": username,
                        "email": email,
                        "password_hash": password_hash,
                        "created_at": first + timedelta(seconds=i),
                        "updated_at": first,
                    }
                    for i, (username, email) in enumerate(rows)
                ],
            )
        await db.upgrade(engine)
    finally:
        hasher.close()
        await engine.dispose()


async def test_canonical_names_backfill_the_users_made_before(
    empty_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        await _users_made_before_canonical_names(
            empty_backend.database_url,
            ("Ada", "Ada@Example.COM"),
            ("strasse_old", "straße@example.com"),
            # lower() told these two apart, so both registered; casefold() makes them one address
            ("strasse_new", "STRASSE@example.com"),
        )
    assert "can log in by username only" in caplog.text
    async with AsyncTestClient(app=create_app(make_settings(empty_backend))) as client:
        for login in ("ada", "ADA", "ada@example.com", "ADA@EXAMPLE.COM"):
            await log_in(client, login)
        taken = await client.post(
            "/api/v1/users", json={"username": "ADA", "email": "ada@example.net", "password": PASSWORD}
        )
        assert taken.json()["code"] == "accounts.username_taken"
        # the older account keeps the address; the newer one still logs in by its username
        by_email = await log_in(client, "Strasse@Example.com")
        assert (await client.get("/api/v1/users/me", headers=bearer(by_email))).json()["username"] == "strasse_old"
        await log_in(client, "strasse_new")
        again = await client.post(
            "/api/v1/users", json={"username": "third", "email": "STRAßE@example.com", "password": PASSWORD}
        )
        assert again.json()["code"] == "accounts.email_taken"
