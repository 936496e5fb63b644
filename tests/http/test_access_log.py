"""The access log of a real `keel serve` (SPEC §9): a line per request and per connection, and no secret anywhere."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tests.conftest import Backend
from tests.realtime.conftest import backend_env, receive, subscribe
from tests.servers import keel_serve

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "another horse, another battery"


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def access_lines(output: str) -> list[dict[str, Any]]:
    return [line for line in lines(output) if line.get("logger") == "keel.access"]


async def wait_for(predicate: Any, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_no_secret_reaches_any_line_and_every_request_is_one(backend: Backend, tmp_path: Path) -> None:
    env = backend_env(backend, KEEL_LOG_LEVEL="debug")
    with keel_serve(env, tmp_path) as server:
        url = server.url
        http = httpx.AsyncClient(base_url=url)
        body = {"username": "ada", "email": "ada@example.com", "password": PASSWORD}
        assert (await http.post("/api/v1/users", json=body)).status_code == 201
        tokens = (await http.post("/api/v1/auth/token", data={"username": "ada", "password": PASSWORD})).json()
        wrong = await http.post("/api/v1/auth/token", json={"username": "ada", "password": "not " + PASSWORD})
        assert wrong.status_code == 401
        refreshed = (await http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json()
        auth = {"Authorization": f"Bearer {refreshed['access_token']}"}
        change = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        assert (await http.post("/api/v1/users/me/password", json=change, headers=auth)).status_code == 204
        channel = (await http.post("/api/v1/channels", json={"name": "general"}, headers=auth)).json()["id"]

        ticket = (await http.post("/api/v1/realtime/tickets", headers=auth)).json()["ticket"]
        async with connect(f"{url.replace('http', 'ws')}/ws?ticket={ticket}") as ws:
            await subscribe(ws, channel)
            await http.post(f"/api/v1/channels/{channel}/messages", json={"body": "hello"}, headers=auth)
            assert (await receive(ws))["type"] == "message"
        sse_ticket = (await http.post("/api/v1/realtime/tickets", headers=auth)).json()["ticket"]
        async with http.stream("GET", "/events", params={"channel": channel, "ticket": sse_ticket}) as stream:
            assert stream.status_code == 200
            await anext(aiter(stream.aiter_lines()))
        refused = await http.get("/events", params={"channel": channel, "ticket": "used-or-unknown-t1ck3t"})
        assert refused.status_code == 401

        await wait_for(lambda: len([a for a in access_lines(server.output()) if a["route"] == "/events"]) == 2)
        output = server.output()
        await http.aclose()

    secrets = [
        PASSWORD,
        NEW_PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
        ticket,
        sse_ticket,
        "used-or-unknown-t1ck3t",
    ]
    for secret in secrets:
        assert secret not in output, f"a secret reached the log: {secret[:12]}…"
    # every piece of a JWT is secret enough: its signature above all
    assert refreshed["access_token"].rsplit(".", 1)[1] not in output

    # the edge logs a WebSocket without wrapping its `send`, which would cost fan-out its direct transport writes
    assert "websocket accepted: TransportSocket writes" in output
    access = access_lines(output)
    routes = [(line["method"], line["route"], line["status"]) for line in access]
    assert ("POST", "/api/v1/users", 201) in routes
    assert ("POST", "/api/v1/auth/token", 401) in routes
    assert ("POST", "/api/v1/channels/{channel_id}/messages", 201) in routes
    assert ("GET", "/ws", 101) in routes  # one line per WebSocket, when it closes
    assert ("GET", "/events", 200) in routes
    assert ("GET", "/events", 401) in routes
    assert all(channel not in line["route"] for line in access)  # routes are templates, never ids
    post = next(line for line in access if line["route"] == "/api/v1/channels/{channel_id}/messages")
    assert post["path"] == f"/api/v1/channels/{channel}/messages"
    assert post["user_id"] is not None
    assert post["client_ip"] == "127.0.0.1"
    assert all("?" not in line["path"] for line in access)  # query strings (tickets) are never logged
