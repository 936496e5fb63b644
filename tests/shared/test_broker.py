from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from keel.shared import Backends, BackendUnavailable
from keel.shared import broker as broker_module
from tests.shared.conftest import DEAD_REDIS_URL, OpenBackends, drop_pubsub_connections


def new_channel() -> str:
    return f"test:{uuid.uuid4()}"


async def eventually(check: Callable[[], bool]) -> None:
    """Wait up to 3 s for `check()` to hold: delivery through Redis takes a moment."""
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 3 s")


async def numsub(redis: Redis, channel: str) -> int:
    """How many connections subscribe to `channel` in Redis."""
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count)


async def numsub_becomes(redis: Redis, channel: str, expected: int) -> None:
    for _ in range(200):
        if await numsub(redis, channel) == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"PUBSUB NUMSUB {channel} is {await numsub(redis, channel)}, not {expected}")


async def test_publish_reaches_every_handler_in_order(backends: Backends) -> None:
    channel, other = new_channel(), new_channel()
    inboxes: list[list[bytes]] = [[], [], []]
    for inbox in inboxes:
        await backends.broker.subscribe(channel, inbox.append)
    elsewhere: list[bytes] = []
    await backends.broker.subscribe(other, elsewhere.append)

    await backends.broker.publish(channel, b"one")
    await backends.broker.publish(channel, b"two")

    await eventually(lambda: all(len(inbox) == 2 for inbox in inboxes))
    assert inboxes == [[b"one", b"two"]] * 3
    assert elsewhere == []


async def test_publish_many_reaches_a_handler_in_order_within_one_loop_iteration(backends: Backends) -> None:
    # what coalesced fan-out relies on (keel.realtime.hub): a feed that settles on the next iteration gets the whole
    # batch at once, in-process and through Redis alike
    channel = new_channel()
    got: list[bytes] = []
    iterations: list[int] = []  # how many messages had arrived at each iteration that saw one

    def handler(data: bytes) -> None:
        if not got or iterations[-1] != -1:
            iterations.append(-1)
            asyncio.get_running_loop().call_soon(lambda: iterations.__setitem__(-1, len(got)))
        got.append(data)

    await backends.broker.subscribe(channel, handler)
    batches = [[b"%d.%d" % (batch, i) for i in range(20)] for batch in range(3)]
    for n, batch in enumerate(batches, 1):
        await backends.broker.publish_many(channel, batch)
        await eventually(lambda: len(got) == 20 * n and iterations[-1] != -1)  # noqa: B023  # called at once

    assert got == [message for batch in batches for message in batch]
    assert iterations == [20, 40, 60]


async def test_closed_subscription_gets_nothing_more(backends: Backends) -> None:
    channel = new_channel()
    closed: list[bytes] = []
    kept: list[bytes] = []
    subscription = await backends.broker.subscribe(channel, closed.append)
    await backends.broker.subscribe(channel, kept.append)

    await subscription.close()
    await subscription.close()  # idempotent
    await backends.broker.publish(channel, b"after")

    await eventually(lambda: kept == [b"after"])
    assert closed == []  # handlers of a channel are called together, so it would have been by now


async def test_raising_handler_does_not_stop_the_others(backends: Backends, caplog: pytest.LogCaptureFixture) -> None:
    channel = new_channel()
    before: list[bytes] = []
    after: list[bytes] = []

    def explode(data: bytes) -> None:
        raise RuntimeError("handler bug")

    await backends.broker.subscribe(channel, before.append)
    await backends.broker.subscribe(channel, explode)
    await backends.broker.subscribe(channel, after.append)
    with caplog.at_level(logging.ERROR, logger="keel.shared.broker"):
        await backends.broker.publish(channel, b"1")
        await backends.broker.publish(channel, b"2")
        await eventually(lambda: len(after) == 2)

    assert before == after == [b"1", b"2"]
    failures = [record for record in caplog.records if record.exc_info]
    assert [record.getMessage() for record in failures] == ["broker handler failed"] * 2


async def test_publish_reaches_subscribers_on_every_instance(redis_url: str, open_instance: OpenBackends) -> None:
    first, second = await open_instance(redis_url), await open_instance(redis_url)
    channel = new_channel()
    on_first: list[bytes] = []
    on_second: list[bytes] = []
    await first.broker.subscribe(channel, on_first.append)
    await second.broker.subscribe(channel, on_second.append)

    # no sleep after subscribe(): it returns once Redis has confirmed the subscription
    await first.broker.publish(channel, b"from first")
    await second.broker.publish(channel, b"from second")

    await eventually(lambda: len(on_first) == 2 and len(on_second) == 2)
    assert on_first == on_second == [b"from first", b"from second"]


async def test_one_redis_subscription_per_channel_per_instance(
    redis_url: str, open_instance: OpenBackends, redis_admin: Redis
) -> None:
    backends = await open_instance(redis_url)
    channel = new_channel()
    inboxes: list[list[bytes]] = [[], [], []]
    subscriptions = await asyncio.gather(*(backends.broker.subscribe(channel, inbox.append) for inbox in inboxes))
    assert await numsub(redis_admin, channel) == 1
    await backends.broker.publish(channel, b"to all three")
    await eventually(lambda: inboxes == [[b"to all three"]] * 3)

    for subscription in subscriptions[:2]:
        await subscription.close()
    await asyncio.sleep(0.05)
    assert await numsub(redis_admin, channel) == 1  # one local handler left

    await subscriptions[2].close()
    await numsub_becomes(redis_admin, channel, 0)

    # subscribing again after the last one left subscribes in Redis again
    received: list[bytes] = []
    await backends.broker.subscribe(channel, received.append)
    assert await numsub(redis_admin, channel) == 1
    await backends.broker.publish(channel, b"again")
    await eventually(lambda: received == [b"again"])


async def test_reconnects_after_losing_redis_and_calls_on_resume(
    redis_url: str, open_instance: OpenBackends, redis_admin: Redis
) -> None:
    backends, publisher = await open_instance(redis_url), await open_instance(redis_url)
    channels = [new_channel(), new_channel()]
    received: list[bytes] = []
    for channel in channels:
        await backends.broker.subscribe(channel, received.append)
    resumed = asyncio.Event()
    backends.broker.on_resume(resumed.set)
    reconnects = REGISTRY.get_sample_value("keel_broker_reconnects_total") or 0.0

    await drop_pubsub_connections(redis_admin)
    async with asyncio.timeout(3):
        await resumed.wait()
    assert (REGISTRY.get_sample_value("keel_broker_reconnects_total") or 0.0) >= reconnects + 1

    # on_resume comes after every channel is subscribed again: publishing now must be delivered
    for channel in channels:
        assert await numsub(redis_admin, channel) == 1
        await publisher.broker.publish(channel, channel.encode())
    await eventually(lambda: sorted(received) == sorted(channel.encode() for channel in channels))


async def test_idle_connection_answers_pings_without_reconnecting(
    redis_url: str, open_instance: OpenBackends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "IDLE_PING", 0.02)
    backends = await open_instance(redis_url)
    channel = new_channel()
    received: list[bytes] = []
    await backends.broker.subscribe(channel, received.append)
    resumes: list[None] = []
    backends.broker.on_resume(lambda: resumes.append(None))

    await asyncio.sleep(0.3)  # about 15 idle PINGs: a reply not recognised would look like a dead connection

    assert resumes == []
    await backends.broker.publish(channel, b"still live")
    await eventually(lambda: received == [b"still live"])


async def test_publish_raises_backend_unavailable_when_redis_is_down(open_instance: OpenBackends) -> None:
    backends = await open_instance(DEAD_REDIS_URL)

    with pytest.raises(BackendUnavailable):
        await backends.broker.publish(new_channel(), b"lost")
    with pytest.raises(BackendUnavailable):
        await backends.broker.publish_many(new_channel(), [b"lost", b"too"])
    # subscribing during an outage does not hang; the subscription goes live when Redis returns
    async with asyncio.timeout(2):
        await backends.broker.subscribe(new_channel(), lambda data: None)


async def test_close_ends_the_reader_when_a_cancel_is_lost(
    redis_url: str, open_instance: OpenBackends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a cancel lost inside the reader's redis-py calls (what a rare shutdown hang pointed to): here the read loses
    # the first cancel outright, and close() must still end the reader rather than wait for it for ever
    original = PubSub.get_message
    lost: list[None] = []

    async def losing_one_cancel(self: PubSub, *args: object, **kwargs: object) -> object:
        try:
            return await original(self, *args, **kwargs)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(None)
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return None

    monkeypatch.setattr(PubSub, "get_message", losing_one_cancel)
    backends = await open_instance(redis_url)
    await backends.broker.subscribe(new_channel(), lambda data: None)
    await asyncio.sleep(0.05)  # the reader waits in its read

    closing = asyncio.create_task(backends.broker.close())
    await asyncio.wait([closing], timeout=3)  # not asyncio.timeout: its cancel would reach the reader, a second one
    assert closing.done(), "close() still waits for the reader"
    assert lost == [None]
