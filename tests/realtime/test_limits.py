"""Realtime limits against a real `keel serve` (SPEC §5): subscribes are rate limited, streams capped per user."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import Backend
from tests.realtime.conftest import Live, backend_env, receive, refused, send, start_live, subscribe
from tests.servers import keel_serve, sign_up

UNKNOWN = "00000000-0000-4000-8000-000000000000"


async def test_subscribes_over_the_rate_limit_are_refused_before_the_database(backend: Backend, tmp_path: Path) -> None:
    # burst 8 and one a minute: creating the channel and opening the socket take 2 of the user's 8
    with keel_serve(backend_env(backend, KEEL_RATE_LIMIT="1/min burst 8"), tmp_path) as server:
        live = start_live(server)
        async with live.socket() as ws:
            passed = 0
            while (reply := await subscribe_reply(ws, live.channel))["type"] == "subscribed":
                passed += 1
                assert passed <= 6, "subscribes were never limited"
            assert passed >= 3  # the burst, less what signing up and connecting took
            assert (reply["code"], reply["ref"]) == ("rate_limited", "s")
            # the budget is spent: an unknown channel answers rate_limited, not not_found, so the limiter came
            # before the database lookup
            for i in range(20):
                await send(ws, type="subscribe", channel=UNKNOWN, ref=f"flood-{i}")
                error = await receive(ws)
                assert (error["type"], error["code"], error["ref"]) == ("error", "rate_limited", f"flood-{i}")
                assert "retry in" in error["detail"]
            # the socket stays open and still serves what is not limited: ping, unsubscribe, live delivery
            await send(ws, type="ping", ref="alive")
            assert await receive(ws) == {"type": "pong", "ref": "alive"}
            await send(ws, type="unsubscribe", channel=UNKNOWN)
            assert await receive(ws) == {"type": "unsubscribed", "channel": UNKNOWN}
            async with httpx.AsyncClient(base_url=live.url, headers=live.auth) as client:
                assert (await client.get("/healthz")).status_code == 200
        assert "Traceback" not in server.output()


async def subscribe_reply(ws: ClientConnection, channel: str) -> dict[str, Any]:
    await send(ws, type="subscribe", channel=channel, ref="s")
    return await receive(ws)


@asynccontextmanager
async def event_stream(live: Live, client: httpx.AsyncClient, channel: str | None = None) -> AsyncIterator[None]:
    """An open /events stream of `live`'s user, its first line read."""
    async with client.stream("GET", "/events", params={"channel": channel or live.channel}) as response:
        assert response.status_code == 200, await response.aread()
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 5) == "retry: 3000"
        yield


async def until_released(live: Live, attempts: int = 50) -> ClientConnection:
    """A new socket, once the server has let go of one the client closed (it learns of that a moment later)."""
    for _ in range(attempts):
        try:
            return await connect(live.ws_url, additional_headers=live.auth)
        except InvalidStatus as refusal:
            if refusal.response.status_code != 429:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the closed stream's slot was never released")


async def test_a_user_holds_at_most_max_streams_per_user_and_closing_one_frees_it(
    backend: Backend, tmp_path: Path
) -> None:
    with keel_serve(backend_env(backend, KEEL_MAX_STREAMS_PER_USER="3"), tmp_path) as server:
        live = start_live(server)
        async with (
            httpx.AsyncClient(base_url=live.url, headers=live.auth, timeout=10) as client,
            live.socket() as first,
            live.socket(),
            event_stream(live, client),
        ):
            await subscribe(first, live.channel)
            # the fourth, WebSocket or stream, is refused before it opens
            status, problem = await refused(live.ws_url, additional_headers=live.auth)
            assert (status, problem["code"]) == (429, "realtime.too_many_streams")
            response = await client.get("/events", params={"channel": live.channel})
            assert response.status_code == 429
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["code"] == "realtime.too_many_streams"
            # another user is not affected
            other = sign_up(live.url, "bob")
            bob = {"Authorization": f"Bearer {other['access_token']}"}
            async with connect(live.ws_url, additional_headers=bob) as ws:
                await send(ws, type="ping")
                assert await receive(ws) == {"type": "pong"}

            await first.close()
            again = await until_released(live)
            try:
                await send(again, type="ping")
                assert await receive(again) == {"type": "pong"}
                status, _ = await refused(live.ws_url, additional_headers=live.auth)
                assert status == 429  # full again
            finally:
                await again.close()


async def test_every_way_a_stream_ends_releases_its_slot(backend: Backend, tmp_path: Path) -> None:
    with keel_serve(backend_env(backend, KEEL_MAX_STREAMS_PER_USER="1"), tmp_path) as server:
        live = start_live(server)
        async with httpx.AsyncClient(base_url=live.url, headers=live.auth, timeout=10) as client:
            # refused after the slot was taken (an unknown channel is found out only then), again and again
            for _ in range(3):
                response = await client.get("/events", params={"channel": UNKNOWN})
                assert response.status_code == 404
            async with event_stream(live, client):
                pass  # the client hangs up on an open stream
            ws = await until_released(live)
            await ws.close()
            # the client vanishes without a close frame
            host, port = live.url.removeprefix("http://").split(":")
            for _ in range(3):
                raw = socket.create_connection((host, int(port)))
                raw.sendall(
                    f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    f"Authorization: {live.auth['Authorization']}\r\n\r\n".encode()
                )
                raw.settimeout(5)
                assert raw.recv(4096).startswith(b"HTTP/1.1 101")
                raw.close()
                ws = await until_released(live)
                await ws.close()
            ws = await until_released(live)
            await ws.close()
        assert "Traceback" not in server.output()
