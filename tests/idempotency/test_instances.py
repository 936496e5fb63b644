"""Idempotency-Key against real `keel serve` processes: a WebSocket publish, two instances racing, a killed one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.conftest import Backend, pg_admin_dsn
from tests.realtime.conftest import Live, backend_env, receive, send, start_live, subscribe
from tests.servers import keel_serve, scaled_env, sign_up

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
RACES = 12


@pytest.fixture
def live(backend: Backend, tmp_path: Path) -> Iterator[Live]:
    with keel_serve(backend_env(backend), tmp_path) as server:
        yield start_live(server)


async def test_a_publish_with_an_idempotency_key_is_sent_once(live: Live) -> None:
    async with live.socket() as ws:
        await subscribe(ws, live.channel)
        publish = {"type": "publish", "channel": live.channel, "body": "once", "idempotency_key": "ws-1"}
        await send(ws, **publish, ref="a")
        first = [await receive(ws), await receive(ws)]
        published = next(f for f in first if f["type"] == "published")
        assert published["ref"] == "a"
        assert [f["type"] for f in first if f["type"] == "message"] == ["message"]
        await send(ws, **publish, ref="b")
        assert await receive(ws) == {"type": "published", "ref": "b", "message": published["message"]}
        await send(ws, type="ping", ref="p")
        assert await receive(ws) == {"type": "pong", "ref": "p"}  # the replay was not fanned out again
        await send(ws, **{**publish, "body": "changed"}, ref="c")
        reused = await receive(ws)
        assert (reused["type"], reused["code"], reused["ref"]) == ("error", "invalid", "c")
        assert "http.idempotency_key_reused" in reused["detail"]
        await send(ws, **{**publish, "idempotency_key": "has space"}, ref="d")
        assert (await receive(ws))["code"] == "invalid"
    # the REST post of the same message with the same key is the same operation: it answers the socket's message
    async with httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post(
            f"/api/v2/channels/{live.channel}/messages", json={"body": "once"}, headers={**live.auth, KEY: "ws-1"}
        )
    assert response.status_code == 201
    assert response.headers[REPLAYED] == "true"
    assert response.json() == published["message"]
    assert live.channel_seq() == 1


def test_the_same_post_sent_to_two_instances_at_once_creates_one_message(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = scaled_env(pg_url, redis_url)
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        auth = {"Authorization": f"Bearer {sign_up(a.url)['access_token']}"}
        channel = httpx.post(f"{a.url}/api/v1/channels", json={"name": "race"}, headers=auth).json()["id"]

        async def race(client: httpx.AsyncClient, key: str) -> list[httpx.Response]:
            async def post(base: str) -> httpx.Response:
                return await client.post(
                    f"{base}/api/v1/channels/{channel}/messages", json={"body": key}, headers={**auth, KEY: key}
                )

            return list(await asyncio.gather(post(a.url), post(b.url)))

        async def races() -> list[list[httpx.Response]]:
            async with httpx.AsyncClient(timeout=30) as client:
                return [await race(client, f"key-{i}") for i in range(RACES)]

        for pair in asyncio.run(races()):
            statuses = sorted(r.status_code for r in pair)
            assert statuses in ([201, 201], [201, 409]), [r.text for r in pair]
            assert len({r.content for r in pair if r.status_code == 201}) == 1  # a 201 twin is the replay
            if statuses == [201, 409]:
                assert next(r for r in pair if r.status_code == 409).json()["code"] == "http.idempotency_key_in_use"
        stored = httpx.get(f"{b.url}/api/v1/channels/{channel}/messages?limit=100", headers=auth).json()
        assert sorted(m["seq"] for m in stored) == list(range(1, RACES + 1))  # one each, and no gap
        assert sorted(m["body"] for m in stored) == sorted(f"key-{i}" for i in range(RACES))


def test_a_twin_of_a_request_in_flight_is_409_and_a_retry_after_its_instance_died_creates_exactly_one(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = scaled_env(pg_url, redis_url)
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        auth = {"Authorization": f"Bearer {sign_up(a.url)['access_token']}", KEY: "dies"}
        channel = httpx.post(f"{a.url}/api/v1/channels", json={"name": "fragile"}, headers=auth).json()["id"]
        path = f"/api/v1/channels/{channel}/messages"

        async def kill_mid_request() -> None:
            conn = await asyncpg.connect(pg_admin_dsn(pg_url, urlsplit(pg_url).path.lstrip("/")))
            try:
                # hold the channel's row: A's request takes the key's lock, then queues here, inside its transaction
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE", channel)
                    async with httpx.AsyncClient(timeout=30) as client:
                        pending = asyncio.create_task(client.post(a.url + path, json={"body": "x"}, headers=auth))
                        deadline = time.monotonic() + 10
                        while not await conn.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> $1"
                            " AND datname = current_database() AND query LIKE 'UPDATE channels%'",
                            conn.get_server_pid(),
                        ):
                            assert time.monotonic() < deadline, "A's request never reached the channel's lock"
                            await conn.execute("SELECT pg_stat_clear_snapshot()")  # read afresh in this transaction
                            await asyncio.sleep(0.02)
                        # in flight on A: its twin on B is refused at once, without waiting for the row
                        twin = await client.post(b.url + path, json={"body": "x"}, headers=auth)
                        assert (twin.status_code, twin.json()["code"]) == (409, "http.idempotency_key_in_use")
                        os.killpg(a.process.pid, signal.SIGKILL)
                        with pytest.raises(httpx.TransportError):
                            await pending
            finally:
                await conn.close()

        asyncio.run(kill_mid_request())
        # A's transaction dies with its connection: until PostgreSQL notices, the key may still be in use
        deadline = time.monotonic() + 10
        while (retry := httpx.post(b.url + path, json={"body": "x"}, headers=auth)).status_code == 409:
            assert time.monotonic() < deadline, retry.text
            time.sleep(0.1)
        assert retry.status_code == 201, retry.text
        assert REPLAYED not in retry.headers  # nothing of A's committed: this is the one write
        assert retry.json()["seq"] == 1
        again = httpx.post(b.url + path, json={"body": "x"}, headers=auth)
        assert (again.status_code, again.headers[REPLAYED], again.content) == (201, "true", retry.content)
        assert len(httpx.get(f"{b.url}{path}", headers=auth).json()) == 1
