"""A signed-up user for the in-process client, and a real `keel serve` per test with a user and a channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import TEST_JWT_SECRET, Backend
from tests.factories import Client, bearer, log_in, register
from tests.servers import Server, keel_serve, sign_up


@pytest.fixture
async def auth(client: Client) -> dict[str, str]:
    """The bearer header of a signed-up user of `client`'s app."""
    await register(client, "ada")
    return bearer(await log_in(client, "ada"))


def backend_env(backend: Backend, **extra: str) -> dict[str, str | None]:
    return {
        "DATABASE_URL": backend.database_url,
        "REDIS_URL": backend.redis_url,
        "KEEL_JWT_SECRET": TEST_JWT_SECRET,
        **extra,
    }


@dataclass
class Live:
    server: Server
    tokens: dict[str, str]
    channel: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "/ws"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    def post(self, body: str, channel: str | None = None) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/api/v1/channels/{channel or self.channel}/messages", json={"body": body}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def new_channel(self, name: str) -> str:
        response = httpx.post(f"{self.url}/api/v1/channels", json={"name": name}, headers=self.auth)
        assert response.status_code == 201, response.text
        channel: str = response.json()["id"]
        return channel

    def channel_seq(self) -> int:
        seq: int = httpx.get(f"{self.url}/api/v1/channels/{self.channel}", headers=self.auth).json()["last_seq"]
        return seq

    def log_out(self) -> None:
        """Log out: the session is revoked everywhere."""
        assert httpx.post(f"{self.url}/api/v1/auth/logout", headers=self.auth).status_code == 204

    def ticket(self) -> str:
        response = httpx.post(f"{self.url}/api/v1/realtime/tickets", headers=self.auth)
        assert response.status_code == 201, response.text
        ticket: str = response.json()["ticket"]
        return ticket

    def socket(self, **options: Any) -> Any:
        """An authenticated WebSocket client (an async context manager)."""
        return connect(self.ws_url, additional_headers=self.auth, **options)


def start_live(server: Server, username: str = "ada") -> Live:
    tokens = sign_up(server.url, username)
    live = Live(server, tokens, "")
    live.channel = live.new_channel("general")
    return live


@pytest.fixture
def live(backend: Backend, tmp_path: Path) -> Iterator[Live]:
    with keel_serve(backend_env(backend), tmp_path) as server:
        yield start_live(server)


async def refused(url: str, **options: Any) -> tuple[int, dict[str, Any]]:
    """The status and problem document of a WebSocket handshake the server refuses."""
    with pytest.raises(InvalidStatus) as refusal:
        async with connect(url, **options):
            pass
    response = refusal.value.response
    assert response.headers["content-type"] == "application/problem+json"
    return response.status_code, json.loads(response.body)


async def send(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(json.dumps(frame))


async def receive(ws: ClientConnection, within: float = 5) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
    return frame


async def subscribe(ws: ClientConnection, channel: str, since: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if since is not None:
        frame["since"] = since
    await send(ws, **frame)
    reply = await receive(ws)
    assert reply["type"] == "subscribed", reply
    return reply


@dataclass
class Event:
    event: str | None
    id: str | None
    data: str | None
    retry: int | None = None

    @property
    def message(self) -> dict[str, Any]:
        assert self.data is not None
        message: dict[str, Any] = json.loads(self.data)
        return message


class EventReader:
    """A minimal SSE parser over httpx's line iterator (the WHATWG rules this server's output needs)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.comments: list[str] = []

    def next(self) -> Event:
        fields: dict[str, str] = {}
        for line in self.lines:
            if not line:
                if fields:
                    retry = fields.get("retry")
                    return Event(
                        fields.get("event"), fields.get("id"), fields.get("data"), int(retry) if retry else None
                    )
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise EOFError("stream ended")
