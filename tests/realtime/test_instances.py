"""Channels across real `keel serve` processes on one PostgreSQL and one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from keel.realtime.service import topic
from keel.shared import open_backends
from tests.realtime.conftest import Live, receive, refused, send, start_live, subscribe
from tests.servers import RedisProcess, keel_serve, scaled_env, sign_up

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


@pytest.fixture
def scaled(pg_url: str, redis_url: str) -> dict[str, str | None]:
    return scaled_env(pg_url, redis_url)


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


async def test_a_subscriber_on_one_instance_gets_what_is_published_on_another(
    scaled: dict[str, str | None], tmp_path: Path
) -> None:
    with keel_serve(scaled, tmp_path) as a, keel_serve(scaled, tmp_path) as b:
        live_a = start_live(a)
        on_b = Live(b, live_a.tokens, live_a.channel)
        async with on_b.socket() as subscriber, live_a.socket() as publisher:
            await subscribe(subscriber, live_a.channel)
            await send(publisher, type="publish", channel=live_a.channel, body="from a", ref="x")
            frame = await receive(subscriber)
            assert (frame["type"], frame["message"]["body"], frame["message"]["seq"]) == ("message", "from a", 1)
            # a logout on A closes the session's socket on B
            live_a.log_out()
            with pytest.raises(ConnectionClosed) as closed:
                await receive(subscriber)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401


async def test_a_read_on_one_instance_sees_a_write_made_on_another(
    scaled: dict[str, str | None], tmp_path: Path
) -> None:
    with keel_serve(scaled, tmp_path) as a, keel_serve(scaled, tmp_path) as b:
        live_a = start_live(a)

        def newest_on_b() -> list[int]:
            """The channel's last_seq as B's cached reads show it: the channel, the v2 list, the newest page."""
            channel = httpx.get(f"{b.url}/api/v1/channels/{live_a.channel}", headers=live_a.auth).json()
            listed = httpx.get(f"{b.url}/api/v2/channels", headers=live_a.auth).json()["data"]
            page = httpx.get(f"{b.url}/api/v1/channels/{live_a.channel}/messages", headers=live_a.auth).json()
            return [channel["last_seq"], listed[0]["last_seq"], page[0]["seq"] if page else 0]

        assert newest_on_b() == newest_on_b() == [0, 0, 0]  # the second time from B's cache
        live_a.post("over REST")
        assert newest_on_b() == [1, 1, 1]
        async with live_a.socket() as publisher:
            await send(publisher, type="publish", channel=live_a.channel, body="over the socket", ref="r")
            assert (await receive(publisher))["type"] == "published"
        assert newest_on_b() == [2, 2, 2]


@pytest.fixture
def outage_env(pg_url: str, private_redis: RedisProcess) -> dict[str, str | None]:
    return scaled_env(pg_url, private_redis.url)


async def test_messages_missed_in_a_redis_outage_are_filled_from_the_database(
    outage_env: dict[str, str | None], private_redis: RedisProcess, tmp_path: Path
) -> None:
    with keel_serve(outage_env, tmp_path) as a, keel_serve(outage_env, tmp_path) as b:
        live_a = start_live(a)
        on_b = Live(b, live_a.tokens, live_a.channel)
        async with on_b.socket() as subscriber:
            await subscribe(subscriber, live_a.channel)
            live_a.post("before")
            assert (await receive(subscriber))["message"]["seq"] == 1
            private_redis.stop()
            live_a.post("during 1")  # committed, not broadcast
            live_a.post("during 2")
            assert on_b.channel_seq() == 3  # B's cache is bypassed while Redis is down
            private_redis.start()
            live_a.post("after")  # may arrive live before the gap is filled: the order holds anyway
            seqs = [(await receive(subscriber, within=20))["message"]["seq"] for _ in range(3)]
            assert seqs == [2, 3, 4]


async def test_a_ticket_that_cannot_be_checked_in_a_redis_outage_gets_503(
    outage_env: dict[str, str | None], private_redis: RedisProcess, tmp_path: Path
) -> None:
    with keel_serve(outage_env, tmp_path) as server:
        live = start_live(server)
        tickets = [live.ticket(), live.ticket()]
        private_redis.stop()
        status, problem = await refused(f"{live.ws_url}?ticket={tickets[0]}")
        assert (status, problem["code"]) == (503, "unavailable")
        async with httpx.AsyncClient() as client:
            stream = await client.get(f"{live.url}/events?channel={live.channel}&ticket={tickets[1]}")
        assert (stream.status_code, stream.json()["code"]) == (503, "unavailable")
        assert stream.headers["retry-after"] == "2"
        private_redis.start()
        async with live.socket() as socket:  # the server stayed up
            await subscribe(socket, live.channel)
