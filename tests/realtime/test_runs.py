"""Coalesced fan-out (keel.realtime.hub, keel.realtime.peers.Run): the messages a feed receives in one loop iteration
go to each follower as one run, and one write where the follower can (TransportSocket, a direct SSE stream). These
fail if a run loses, reorders or duplicates a message on any follower, whatever its position."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest

from keel.identity.tokens import session_key
from keel.realtime.errors import TooSlow
from keel.realtime.events import Stream
from keel.realtime.feed import Feed
from keel.realtime.hub import Hub
from keel.realtime.peers import Delivery, Peer, Position, Run
from keel.realtime.websocket import TransportSocket
from keel.shared.broker import InProcessBroker, Subscription
from tests.realtime.test_transport_socket import CLAIMS


class OneByOne(Peer):
    """A follower with the default send_run: what it got, message by message, and the position each time."""

    kind = "ws"

    def __init__(self) -> None:
        super().__init__(session_key(uuid.uuid4()), send_queue=100)
        self.got: list[int] = []
        self.positions_seen: list[int] = []

    def send_message(self, delivery: Delivery) -> None:
        self.got.append(delivery.seq)
        self.positions_seen.append(next(iter(self.positions.values())).seq)

    def close(self, code: int, reason: str) -> None:
        self.closing = True


class Transport:
    """What TransportSocket writes to: every write kept, and a write buffer that can be made to look full."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


def transport_socket(send_queue: int = 100) -> tuple[TransportSocket, Transport, list[Exception]]:
    transport = Transport()
    protocol: Any = type("WSProtocol", (), {})()
    protocol.transport = transport
    protocol.conn = type("Conn", (), {"connection": None})()
    protocol.writable = type("Event", (), {"_waiters": None})()
    socket = TransportSocket(protocol, CLAIMS, send_queue)
    ended: list[Exception] = []
    socket.end = ended.append  # type: ignore[method-assign,assignment]
    return socket, transport, ended


def seqs_of(data: bytes) -> list[int]:
    return [int(seq) for seq in re.findall(rb'"seq":(\d+)', data)]


def message(channel: uuid.UUID, seq: int) -> bytes:
    return json.dumps(
        {"id": str(uuid.uuid4()), "channel_id": str(channel), "seq": seq, "body": f"m{seq}"}, separators=(",", ":")
    ).encode()


def open_feed(channel: uuid.UUID, last_seq: int = 0) -> Feed:
    hub = Hub(InProcessBroker(), None)  # type: ignore[arg-type]  # no database: nothing here reads history
    feed = Feed(hub, channel)
    feed.last_seq = last_seq
    feed.opened = asyncio.get_running_loop().create_future()
    feed.opened.set_result(Subscription(str(channel), lambda _: asyncio.sleep(0)))
    return feed


def follow(feed: Feed, peer: Peer, seq: int, *, replaying: bool = False) -> Position:
    position = Position(seq, replaying=replaying)
    feed.followers[peer] = peer.positions[feed.channel_id] = position
    feed.refs += 1
    return position


async def test_messages_of_one_iteration_go_out_as_one_run_once_each_in_order_whatever_the_follower() -> None:
    channel = uuid.uuid4()
    feed = open_feed(channel)
    live, ahead, replaying = OneByOne(), OneByOne(), OneByOne()
    socket, transport, _ = transport_socket()
    follow(feed, live, 0)
    follow(feed, ahead, 3)  # had 1-3 already (a replay that overtook the feed)
    backlog = follow(feed, replaying, 0, replaying=True)
    follow(feed, socket, 0)

    for seq in (3, 1, 2, 5, 4, 2):  # out of order, and one twice
        feed.on_message(message(channel, seq))
    assert live.got == []  # nothing before the iteration's end: the rest of a batch may still come
    await asyncio.sleep(0)

    assert live.got == [1, 2, 3, 4, 5]
    assert live.positions_seen == [1, 2, 3, 4, 5]  # each message sent at its own position (SSE ids need it)
    assert ahead.got == [4, 5]
    assert [d.seq for d in backlog.backlog or []] == [1, 2, 3, 4, 5]
    assert len(transport.writes) == 1  # the socket got the run in one write
    assert seqs_of(transport.writes[0]) == [1, 2, 3, 4, 5]
    assert socket.positions[channel].seq == 5

    for seq in (5, 7, 6):  # a repeat of what went out, then two more
        feed.on_message(message(channel, seq))
    await asyncio.sleep(0)
    assert live.got == [1, 2, 3, 4, 5, 6, 7]
    assert seqs_of(b"".join(transport.writes)) == [1, 2, 3, 4, 5, 6, 7]
    assert feed.last_seq == 7


async def test_a_gap_holds_the_run_back_until_it_is_filled() -> None:
    channel = uuid.uuid4()
    feed = open_feed(channel)
    peer = OneByOne()
    follow(feed, peer, 0)
    history: list[tuple[int, bytes]] = [(1, message(channel, 1))]

    async def read(channel_id: uuid.UUID, *, after_seq: int) -> list[tuple[int, bytes]]:
        return [(seq, data) for seq, data in history if seq > after_seq]

    feed.hub.history = read  # type: ignore[method-assign]
    for seq in (2, 3):
        feed.on_message(message(channel, seq))
    await asyncio.sleep(0)
    for _ in range(5):  # the fill's task
        await asyncio.sleep(0)
    assert peer.got == [1, 2, 3]


def test_a_run_that_would_overflow_a_socket_closes_it_and_writes_nothing() -> None:
    socket, transport, ended = transport_socket(send_queue=4)
    channel = uuid.uuid4()
    run = Run([Delivery(str(channel), seq, message(channel, seq)) for seq in range(1, 4)])
    position = Position(0, replaying=False)
    socket.send_run(run, position)
    assert len(transport.writes) == 1
    frames, largest = run.ws_frames(lambda payload: payload)
    assert largest < len(frames)  # the bound counts the largest message, not the joined write
    transport.buffered = 2 * largest  # room for 2 more of its messages, and the rest of the run is 2
    socket.send_run(run.after(1), position)
    assert len(transport.writes) == 2
    assert ended == []
    transport.buffered = 3 * largest
    socket.send_run(run.after(1), position)
    assert len(transport.writes) == 2
    assert len(ended) == 1
    assert isinstance(ended[0], TooSlow)


@pytest.mark.parametrize("channels", [1, 2])
def test_a_direct_stream_writes_a_run_of_one_channel_at_once_and_of_several_channels_event_by_event(
    channels: int,
) -> None:
    written: list[bytes] = []

    class Direct:
        def write(self, framed: bytes, limit: int) -> bool:
            written.append(framed)
            return True

    direct: Any = Direct()
    stream = Stream(session_key(uuid.uuid4()), send_queue=100)
    stream.direct = direct
    channel = uuid.uuid4()
    position = stream.positions[channel] = Position(0, replaying=False)
    for _ in range(channels - 1):
        stream.positions[uuid.uuid4()] = Position(0, replaying=False)
    run = Run([Delivery(str(channel), seq, message(channel, seq)) for seq in range(1, 4)])
    stream.send_run(run, position)
    assert len(written) == (1 if channels == 1 else 3)
    body = b"".join(written)
    assert seqs_of(body) == [1, 2, 3]
    ids = [int(match) for match in re.findall(rb"id: [^\n]*" + str(channel).encode() + rb":(\d+)", body)]
    assert ids == [1, 2, 3]  # each event's id is the position right after its own message
    assert position.seq == 3
