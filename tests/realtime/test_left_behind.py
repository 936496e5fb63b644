"""No message left behind (SPEC §10): a message committed by an instance that died before publishing it still
reaches the live subscribers of every instance within 5 s, once, in order (keel.realtime.watch).

Against servers, the scaled backend only: the embedded one is one process, whose subscribers die with the writer
(and does not watch); the watch itself, ticked by hand, is tested on both.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from keel import db
from keel.accounts.models import User
from keel.identity.tokens import session_key
from keel.realtime import service
from keel.realtime.hub import Hub
from keel.realtime.models import Channel, Message
from keel.realtime.peers import Delivery, Peer
from keel.realtime.watch import SeqWatch
from keel.shared import open_backends
from tests.conftest import Backend
from tests.factories import Client, make_channel
from tests.realtime.conftest import Live, receive, start_live, subscribe
from tests.realtime.test_events import events
from tests.servers import keel_serve, scaled_env


async def commit_unpublished(database_url: str, channel_id: str, body: str, username: str = "ada") -> int:
    """Write a message as keel's service does (the next seq and the row, one transaction), then publish nothing:
    what an instance that dies right after its commit leaves behind."""
    engine = db.create_engine(database_url, pool_size=1)
    try:
        async with db.create_sessionmaker(engine)() as session:
            author = await session.scalar(select(User.id).where(User.username == username))
            seq: int | None = await session.scalar(
                update(Channel)
                .where(Channel.id == uuid.UUID(channel_id))
                .values(last_seq=Channel.last_seq + 1)
                .returning(Channel.last_seq)
            )
            assert author is not None
            assert seq is not None
            session.add(Message(channel_id=uuid.UUID(channel_id), seq=seq, author_id=author, body=body))
            await session.commit()
    finally:
        await engine.dispose()
    return seq


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
def env(pg_url: str, redis_url: str) -> dict[str, str | None]:
    return scaled_env(pg_url, redis_url)


async def test_a_message_whose_writer_died_before_publishing_reaches_every_subscriber(
    env: dict[str, str | None], pg_url: str, tmp_path: Path
) -> None:
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        live_a = start_live(a)
        on_b = Live(b, live_a.tokens, live_a.channel)
        with events(on_b, live_a.channel) as stream:
            async with on_b.socket() as subscriber:
                await subscribe(subscriber, live_a.channel)
                live_a.post("published by A")
                assert (await receive(subscriber))["message"]["seq"] == 1

                lost = await commit_unpublished(pg_url, live_a.channel, "A died before publishing this")
                started = time.monotonic()
                frame = await receive(subscriber, within=5)
                waited = time.monotonic() - started
                assert (frame["message"]["seq"], frame["message"]["body"]) == (lost, "A died before publishing this")
                assert waited < 5

                # publishing resumes: the next message arrives once, and nothing is delivered twice
                live_a.post("published by A again")
                assert (await receive(subscriber))["message"]["seq"] == 3
                live_a.post("and again")
                assert (await receive(subscriber))["message"]["seq"] == 4
                assert metric(b.url, "keel_realtime_seq_watch_fills_total") == 1

            got = await asyncio.to_thread(lambda: [stream.next().message for _ in range(4)])
        assert [(m["seq"], m["body"]) for m in got] == [
            (1, "published by A"),
            (2, "A died before publishing this"),
            (3, "published by A again"),
            (4, "and again"),
        ]
        # A watches too (it follows nothing now, so it reads nothing); B read about once a second
        assert metric(a.url, "keel_realtime_seq_watch_reads_total") == 0
        assert metric(b.url, "keel_realtime_seq_watch_reads_total") >= 1


class Follower(Peer):
    """A follower that keeps what the hub delivers to it."""

    kind = "ws"

    def __init__(self) -> None:
        super().__init__(session_key(uuid.uuid4()), send_queue=100)
        self.got: list[int] = []

    def send_message(self, delivery: Delivery) -> None:
        self.got.append(delivery.seq)

    def close(self, code: int, reason: str) -> None:
        self.closing = True


async def test_the_watch_waits_one_interval_then_fills_once_and_a_late_publish_is_not_delivered_again(
    client: Client, auth: dict[str, str], backend: Backend
) -> None:
    channel = uuid.UUID((await make_channel(client, auth, "general"))["id"])
    # a hub of this test's own (the app's runs on the test client's loop), and a watch ticked by hand
    engine = db.create_engine(backend.database_url, pool_size=2)
    backends = await open_backends(backend.redis_url)
    hub = Hub(backends.broker, db.create_sessionmaker(engine))
    watch = SeqWatch(hub)
    follower = Follower()
    hub.connect(follower)
    try:
        await watch_and_check(hub, watch, follower, channel, backend.database_url)
    finally:
        await hub.disconnect(follower)
        await hub.close()
        await backends.close()
        await engine.dispose()


async def watch_and_check(hub: Hub, watch: SeqWatch, follower: Follower, channel: uuid.UUID, database_url: str) -> None:
    await hub.join(follower, channel, None)

    seq = await commit_unpublished(database_url, str(channel), "committed, not yet published")
    await watch.tick()
    assert follower.got == []  # within the grace: its publisher may be about to publish it
    await watch.tick()  # a whole interval later it is read from the database (by a task of the hub's)
    for _ in range(100):
        if follower.got:
            break
        await asyncio.sleep(0.02)
    assert follower.got == [seq]
    await watch.tick()
    assert follower.got == [seq]

    # the publisher was only slow: its copy arrives through the broker now, and is dropped
    async with hub.session() as session:
        (message,) = await service.messages_after(session, channel, after_seq=0, limit=10)
    await hub.broker.publish(service.topic(channel), service.encode_message(message))
    await asyncio.sleep(0.2)
    assert follower.got == [seq]
