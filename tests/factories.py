"""Small helpers that make test data through the public API, as a client would."""

from __future__ import annotations

import time
import uuid
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel import db
from keel.accounts import service
from keel.accounts.passwords import PasswordHasher
from keel.identity.tokens import Claims
from keel.settings import Settings
from keel.shared.cache import InProcessReadCache

Client = AsyncTestClient[Litestar]
PASSWORD = "correct horse battery"


def make_claims(username: str = "ada") -> Claims:
    """A fresh user's claims as a verified 15-minute access token carries them: what a ticket stands for."""
    now = int(time.time())
    return Claims(
        user_id=uuid.uuid4(),
        username=username,
        session_id=uuid.uuid4(),
        jti="j",
        issued_at=now,
        expires_at=now + 900,
        scopes=frozenset({"user"}),
    )


async def register(
    client: Client, username: str = "ada", email: str | None = None, password: str = PASSWORD
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/users", json={"username": username, "email": email or f"{username}@example.com", "password": password}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def log_in(client: Client, username: str = "ada", password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def make_channel(client: Client, auth: dict[str, str], name: str, description: str = "") -> dict[str, Any]:
    response = await client.post("/api/v1/channels", json={"name": name, "description": description}, headers=auth)
    assert response.status_code == 201, response.text
    channel: dict[str, Any] = response.json()
    return channel


async def post(client: Client, auth: dict[str, str], channel_id: str, body: str) -> dict[str, Any]:
    response = await client.post(f"/api/v1/channels/{channel_id}/messages", json={"body": body}, headers=auth)
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


async def make_admin(settings: Settings, username: str = "root", password: str = PASSWORD) -> None:
    """An admin written straight to the database (the app's own engine lives on the test client's loop)."""
    engine = db.create_engine(settings.database_url)
    hasher = PasswordHasher(workers=1)
    try:
        async with db.create_sessionmaker(engine)() as session:
            await service.create_admin(  # as `keel create-admin` does without Redis: the app's cache is not ours
                session,
                hasher,
                InProcessReadCache(),
                username=username,
                email=f"{username}@example.com",
                password=password,
            )
    finally:
        hasher.close()
        await engine.dispose()
