"""Channels across real `keel serve` processes on one PostgreSQL and one Redis."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec

from keel.realtime.service import topic
from keel.shared import open_backends
from tests.servers import keel_serve, scaled_env, sign_up

WRITERS = 8
EACH = 15


def test_writers_on_two_instances_get_gapless_seq(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = scaled_env(pg_url, redis_url)
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        auth = {"Authorization": f"Bearer {sign_up(a.url)['access_token']}"}
        channel = httpx.post(f"{a.url}/api/v1/channels", json={"name": "busy"}, headers=auth).json()

        def write(writer: int) -> list[int]:
            base = (a.url, b.url)[writer % 2]
            with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
                return [
                    client.post(f"/api/v1/channels/{channel['id']}/messages", json={"body": f"{writer}-{i}"}).json()[
                        "seq"
                    ]
                    for i in range(EACH)
                ]

        with ThreadPoolExecutor(WRITERS) as pool:
            seqs = [seq for batch in pool.map(write, range(WRITERS)) for seq in batch]
        assert sorted(seqs) == list(range(1, WRITERS * EACH + 1))
        stored = httpx.get(f"{b.url}/api/v1/channels/{channel['id']}/messages?limit=100", headers=auth).json()
        assert [m["seq"] for m in stored] == list(range(WRITERS * EACH, WRITERS * EACH - 100, -1))


def test_a_posted_message_is_published_after_it_is_stored(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    with keel_serve(scaled_env(pg_url, redis_url), tmp_path) as server:
        auth = {"Authorization": f"Bearer {sign_up(server.url)['access_token']}"}
        channel = httpx.post(f"{server.url}/api/v1/channels", json={"name": "live"}, headers=auth).json()

        async def listen_and_post() -> tuple[dict[str, object], dict[str, object]]:
            backends = await open_backends(redis_url)  # another "instance" on the same Redis
            received: asyncio.Queue[bytes] = asyncio.Queue()
            subscription = await backends.broker.subscribe(topic(channel["id"]), received.put_nowait)
            try:
                async with httpx.AsyncClient(base_url=server.url, headers=auth) as client:
                    posted = await client.post(f"/api/v1/channels/{channel['id']}/messages", json={"body": "hi"})
                live = await asyncio.wait_for(received.get(), timeout=5)
            finally:
                await subscription.close()
                await backends.close()
            return posted.json(), msgspec.json.decode(live)

        posted, live = asyncio.run(listen_and_post())
        assert live == posted
