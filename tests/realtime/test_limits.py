"""Realtime limits against a real `keel serve` (SPEC §5): subscribes are rate limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tests.conftest import Backend
from tests.realtime.conftest import backend_env, receive, send, start_live
from tests.servers import keel_serve

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
