"""Group-committed publishes (keel.realtime.committer): concurrent publishes share transactions, and seq stays gapless,
every acknowledged seq is committed, fan-out follows seq order, and a failure writes nothing of what it fails."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import db
from keel.realtime import service
from keel.realtime.committer import Committer, ShuttingDown
from keel.realtime.errors import ChannelNotFound
from keel.realtime.models import Message
from keel.realtime.schemas import Author
from keel.shared import open_backends
from keel.shared.broker import Broker
from keel.shared.cache import InProcessReadCache
from keel.shared.errors import OUTAGES
from tests.conftest import Backend
from tests.factories import Client, make_channel, post
from tests.realtime.conftest import Live, receive, send, subscribe

PUBLISHES = 60  # per transport


@dataclass
class Parts:
    """A committer of the test's own loop (the in-process client runs the app on another), on the app's database."""

    committer: Committer
    sessions: async_sessionmaker[AsyncSession]
    broker: Broker


@pytest.fixture
async def parts(backend: Backend) -> AsyncIterator[Parts]:
    engine = db.create_engine(backend.database_url)
    backends = await open_backends(backend.redis_url)
    sessions = db.create_sessionmaker(engine)
    yield Parts(Committer(sessions, backends.broker, backends.cache), sessions, backends.broker)
    await backends.close()
    await engine.dispose()


async def test_concurrent_rest_and_ws_publishes_get_gapless_seqs_fanned_out_in_seq_order(live: Live) -> None:
    async with live.socket() as watcher, live.socket() as a, live.socket() as b:
        await subscribe(watcher, live.channel)

        acked: list[int] = []

        async def rest(http: httpx.AsyncClient, i: int) -> None:
            response = await http.post(f"/api/v1/channels/{live.channel}/messages", json={"body": f"rest {i}"})
            assert response.status_code == 201, response.text
            acked.append(response.json()["seq"])

        async def ws(socket: Any, i: int) -> None:
            for n in range(PUBLISHES // 2):  # pipelined: all sent before any ack is read
                await send(socket, type="publish", channel=live.channel, body=f"ws {i}.{n}", ref=f"{i}.{n}")
            for _ in range(PUBLISHES // 2):
                frame = await receive(socket, within=30)
                assert frame["type"] == "published", frame
                acked.append(frame["message"]["seq"])

        async with httpx.AsyncClient(base_url=live.url, headers=live.auth, timeout=30) as http:
            await asyncio.gather(*(rest(http, i) for i in range(PUBLISHES)), ws(a, 0), ws(b, 1))
            pages = [
                (await http.get(f"/api/v1/channels/{live.channel}/messages?limit=100&offset={o}")).json()
                for o in (0, 100)
            ]
        total = 2 * PUBLISHES
        assert sorted(acked) == list(range(1, total + 1))  # unique and gapless
        fanned_out: list[int] = []
        while len(fanned_out) < total:
            frame = await receive(watcher, within=30)
            if frame["type"] == "message":
                fanned_out.append(frame["message"]["seq"])
        assert fanned_out == list(range(1, total + 1))  # in seq order, none missing
    assert sorted(m["seq"] for page in pages for m in page) == list(range(1, total + 1))  # every ack is stored
    assert live.channel_seq() == total


async def test_publishes_that_arrive_together_share_transactions(
    client: Client, auth: dict[str, str], parts: Parts
) -> None:
    channel, author = await _channel_and_author(client, auth)
    committer = parts.committer
    fanned_out: list[int] = []
    subscription = await parts.broker.subscribe(
        service.topic(channel), lambda data: fanned_out.append(json.loads(data)["seq"])
    )
    before = committer.transactions
    messages = await asyncio.gather(*(committer.publish(channel, service.Draft(author, f"m{i}")) for i in range(100)))
    assert [m.seq for m in messages] == list(range(2, 102))  # queue order is seq order
    assert committer.transactions - before <= 3  # the first alone, then the rest together (at most BATCH each)
    assert await _stored_seqs(parts, channel) == list(range(1, 102))
    for _ in range(100):  # Redis delivers a moment later
        if len(fanned_out) == 100:
            break
        await asyncio.sleep(0.05)
    await subscription.close()
    assert fanned_out == list(range(2, 102))


async def test_a_bad_row_fails_alone_and_its_neighbours_commit_gapless(
    client: Client, auth: dict[str, str], parts: Parts
) -> None:
    channel, author = await _channel_and_author(client, auth)
    committer = parts.committer
    ghost = Author(uuid.uuid4(), "ghost")  # no such user: the message's foreign key refuses it
    drafts = [service.Draft(ghost if i == 3 else author, f"m{i}") for i in range(8)]
    results = await asyncio.gather(*(committer.publish(channel, d) for d in drafts), return_exceptions=True)
    assert isinstance(results[3], IntegrityError)
    seqs = [r.seq for i, r in enumerate(results) if i != 3 and not isinstance(r, BaseException)]
    assert sorted(seqs) == list(range(2, 9))
    assert await _stored_seqs(parts, channel) == list(range(1, 9))


async def test_a_missing_channel_fails_every_waiter_and_writes_nothing(
    client: Client, auth: dict[str, str], parts: Parts
) -> None:
    _, author = await _channel_and_author(client, auth)
    committer, missing = parts.committer, uuid.uuid4()
    results = await asyncio.gather(
        *(committer.publish(missing, service.Draft(author, "x")) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ChannelNotFound) for r in results)
    assert await _stored_seqs(parts, missing) == []
    response = await client.post(f"/api/v1/channels/{missing}/messages", json={"body": "x"}, headers=auth)
    assert response.status_code == 404
    assert response.json()["code"] == "realtime.channel_not_found"


async def test_a_database_outage_fails_the_whole_batch(parts: Parts) -> None:
    engine = db.create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
    committer = Committer(db.create_sessionmaker(engine), parts.broker, InProcessReadCache())
    try:
        results = await asyncio.gather(
            *(committer.publish(uuid.uuid4(), service.Draft(Author(uuid.uuid4(), "a"), "x")) for _ in range(4)),
            return_exceptions=True,
        )
    finally:
        await engine.dispose()
    assert all(isinstance(r, OUTAGES) for r in results), results
    assert committer.transactions == 0


async def test_a_cancelled_waiter_s_message_still_commits_once(
    client: Client, auth: dict[str, str], parts: Parts
) -> None:
    channel, author = await _channel_and_author(client, auth)
    committer = parts.committer
    gone = asyncio.create_task(committer.publish(channel, service.Draft(author, "gone")))
    await asyncio.sleep(0)  # queued
    gone.cancel()
    stayed = await committer.publish(channel, service.Draft(author, "stayed"))
    assert stayed.seq == 3
    assert await _stored_seqs(parts, channel) == [1, 2, 3]
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_close_drains_queued_publishes_and_refuses_new_ones(
    client: Client, auth: dict[str, str], parts: Parts
) -> None:
    channel, author = await _channel_and_author(client, auth)
    committer = Committer(parts.sessions, parts.broker, InProcessReadCache())
    queued = [asyncio.create_task(committer.publish(channel, service.Draft(author, f"m{i}"))) for i in range(30)]
    await asyncio.sleep(0)  # all queued, the first transaction in flight
    await committer.close()
    assert all(task.done() for task in queued)
    assert sorted(task.result().seq for task in queued) == list(range(2, 32))
    with pytest.raises(ShuttingDown):
        await committer.publish(channel, service.Draft(author, "late"))
    assert await _stored_seqs(parts, channel) == list(range(1, 32))


async def test_an_idempotent_retry_in_the_same_batch_or_a_later_one_gets_the_same_seq(
    client: Client, auth: dict[str, str], parts: Parts
) -> None:
    channel, _ = await _channel_and_author(client, auth)
    url = f"/api/v1/channels/{channel}/messages"

    async def keyed(key: str) -> httpx.Response:
        return await client.post(url, json={"body": "once"}, headers={**auth, "Idempotency-Key": key})

    async def plain(i: int) -> httpx.Response:
        return await client.post(url, json={"body": f"other {i}"}, headers=auth)

    # twins of one key among other publishes: one runs, a twin in flight with it answers 409 or the replay
    responses = await asyncio.gather(keyed("k1"), keyed("k1"), *(plain(i) for i in range(10)), keyed("k2"))
    first = {r.headers.get("Idempotent-Replayed"): r for r in responses[:2] if r.status_code == 201}
    assert None in first  # the one that ran
    assert all(r.status_code in (201, 409) for r in responses[:2])
    assert all(r.status_code == 201 for r in responses[2:])
    # retries in later batches (alongside other publishes) replay the same message
    retries = await asyncio.gather(keyed("k1"), keyed("k2"), *(plain(i) for i in range(5)))
    assert retries[0].headers["Idempotent-Replayed"] == "true"
    assert retries[0].json() == first[None].json()
    assert retries[1].json() == responses[-1].json()
    seqs = await _stored_seqs(parts, channel)
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == 1 + 2 + 10 + 5  # each key stored once


async def _channel_and_author(client: Client, auth: dict[str, str]) -> tuple[uuid.UUID, Author]:
    channel = (await make_channel(client, auth, f"c-{uuid.uuid4().hex[:8]}"))["id"]
    author = (await post(client, auth, channel, "first"))["author"]  # seq 1
    return uuid.UUID(channel), Author(uuid.UUID(author["id"]), author["username"])


async def _stored_seqs(parts: Parts, channel: uuid.UUID) -> list[int]:
    async with parts.sessions() as session:
        query = select(Message.seq).where(Message.channel_id == channel).order_by(Message.seq)
        return list((await session.scalars(query)).all())
