"""Tickets on both TTL stores, and /ws under a server other than uvicorn (the queued fallback), in process."""

from __future__ import annotations

import asyncio

import msgspec
from litestar.testing import TestClient

from keel.identity.tokens import session_key
from keel.main import create_app
from keel.realtime import tickets
from keel.shared import open_backends
from tests.conftest import Backend, make_settings
from tests.factories import make_claims

CLAIMS = make_claims()


async def test_a_ticket_stands_for_its_claims_once_and_expires(backend: Backend) -> None:
    backends = await open_backends(backend.redis_url)
    try:
        ticket = await tickets.issue(backends.kv, CLAIMS)
        assert await tickets.redeem(backends.kv, ticket) == CLAIMS
        assert await tickets.redeem(backends.kv, ticket) is None
        short = await tickets.issue(backends.kv, CLAIMS, ttl=0.2)
        await asyncio.sleep(0.4)
        assert await tickets.redeem(backends.kv, short) is None
        assert await tickets.redeem(backends.kv, "") is None
        assert await tickets.redeem(backends.kv, "x" * 500) is None
    finally:
        await backends.close()


async def test_a_ticket_written_without_the_derived_fields_redeems_with_them(backend: Backend) -> None:
    # what an instance of the release before Claims.subject and revocation_key stored: a rolling deploy redeems it
    # on a new one, with both derived (the denylist checks the socket's session by the key)
    backends = await open_backends(backend.redis_url)
    try:
        derived = {"subject", "revocation_key"}
        old_form = msgspec.json.encode({k: v for k, v in msgspec.to_builtins(CLAIMS).items() if k not in derived})
        await backends.kv.set("ticket:t-old", old_form, 60)
        claims = await tickets.redeem(backends.kv, "t-old")
        assert claims == CLAIMS
        assert claims is not None
        assert claims.subject == str(CLAIMS.user_id)
        assert claims.revocation_key == session_key(CLAIMS.session_id) == f"sid:{CLAIMS.session_id}"
    finally:
        await backends.close()


def test_websocket_through_the_queued_fallback(backend: Backend) -> None:
    # Litestar's test client is not uvicorn: sockets get a writer task and a bounded queue instead
    with TestClient(create_app(make_settings(backend))) as client:
        body = {"username": "ada", "email": "ada@example.com", "password": "correct horse battery"}
        assert client.post("/api/v1/users", json=body).status_code == 201
        tokens = client.post("/api/v1/auth/token", data={"username": "ada", "password": body["password"]}).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        channel = client.post("/api/v1/channels", json={"name": "general"}, headers=auth).json()["id"]
        with client.websocket_connect("/ws", headers=auth) as ws:
            ws.send_json({"type": "subscribe", "channel": channel})
            assert ws.receive_json() == {"type": "subscribed", "channel": channel, "last_seq": 0}
            ws.send_json({"type": "publish", "channel": channel, "body": "hi", "ref": 1})
            frames = [ws.receive_json(), ws.receive_json()]
            assert sorted(f["type"] for f in frames) == ["message", "published"]
            assert all(f["message"]["seq"] == 1 for f in frames)
