"""One instance's realtime fan-out: a feed per channel in use, shared by every socket and stream following it.

A feed holds the instance's only broker subscription for its channel and the last seq it delivered, and it
delivers strictly in order: a message that arrives ahead of its predecessors (publishes from several instances
can overtake each other, and an outage can lose some) waits while the gap is read from the database, so every
follower sees seq N+1 right after N. If the database cannot fill a gap, the feed's followers are closed with 1012
so they resume with `since`/`Last-Event-ID` (SPEC §10).

Delivery is synchronous, without awaiting any follower (bench/SPIKES.md): one encoded frame per message, built once
for all followers, and one write per follower per run of messages. The broker's callbacks only collect; the feed
settles once per loop iteration (call_soon), so the messages of one committed batch, which the committer publishes
together, reach each socket as one write of their frames (one send() instead of one per message). A follower that
cannot keep up closes itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from typing import Final

import msgspec
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import metrics, telemetry
from keel.errors import KeelError, Unavailable
from keel.realtime import service
from keel.realtime.errors import CLOSE_GOING_AWAY, SessionRevoked
from keel.realtime.peers import Delivery, Peer, Position, Run
from keel.realtime.watch import SeqWatch
from keel.shared.broker import Broker, Subscription

log = logging.getLogger("keel.realtime")

PAGE: Final = 500  # messages per history query when replaying or filling a gap
DRAIN_TIMEOUT: Final = 5.0  # how long shutdown waits for in-flight publishes before closing sockets
# then how long it waits for the closed sockets and streams to go: a server that stops its connections as soon as
# the drain returns (Granian) would otherwise cut off close frames still queued for their writers
CLOSE_WAIT: Final = 1.0

CONNECTIONS: Final = {"ws": metrics.WS_CONNECTIONS, "sse": metrics.SSE_CONNECTIONS}
DELIVERED: Final = metrics.REALTIME_MESSAGES


class _Seq(msgspec.Struct):
    seq: int


_seq_of = msgspec.json.Decoder(_Seq)


class Feed:
    __slots__ = (
        "_filling",
        "_settling",
        "channel_id",
        "followers",
        "hub",
        "last_seq",
        "name",
        "opened",
        "pending",
        "refs",
        "traces",
    )

    def __init__(self, hub: Hub, channel_id: uuid.UUID) -> None:
        self.hub = hub
        self.channel_id = channel_id
        self.name = str(channel_id)
        self.followers: dict[Peer, Position] = {}
        self.refs = 0  # followers plus subscribes still opening the feed: at 0 the feed is closed
        self.last_seq = 0
        self.pending: dict[int, bytes] = {}  # seq -> message, held while the feed opens or a gap is filled
        self.traces: dict[int, bytes] = {}  # seq -> the traceparent of its publish, while tracing is on
        self.opened: asyncio.Future[Subscription] | None = None
        self._filling = False
        self._settling = False  # a settle is scheduled for this loop iteration's end

    def subscription(self) -> Subscription | None:
        """The broker subscription, once the feed has opened."""
        opened = self.opened
        if opened is None or not opened.done() or opened.cancelled() or opened.exception() is not None:
            return None
        return opened.result()

    def on_message(self, data: bytes) -> None:
        """The broker's callback."""
        data, parent = telemetry.split_traceparent(data)  # clients get the message's bytes, never the header
        seq = _seq_of.decode(data).seq
        if seq <= self.last_seq:
            return
        self.pending[seq] = data
        if parent is not None and telemetry.tracer is not None:
            self.traces[seq] = parent
        if not self._settling and not self._filling and self.subscription() is not None:
            # not at once: the rest of a batch published together arrives in this same loop iteration, and a run
            # of messages goes to each follower in one write (bench/publishing.py, 100 subscribers, SQLite, load 7:
            # server CPU per message 0.87 -> 0.47 ms for WS publishes, 1.29 -> 0.90 ms for REST)
            self._settling = True
            asyncio.get_running_loop().call_soon(self.settle)

    def settle(self) -> None:
        """Deliver what is pending in order; a gap starts a fill from the database."""
        self._settling = False
        if self._filling:  # the fill delivers what is pending once it is done
            return
        run = []
        seq = self.last_seq + 1
        while (data := self.pending.pop(seq, None)) is not None:
            run.append(Delivery(self.name, seq, data))
            seq += 1
        if run:
            self.fan_out(Run(run))
        if self.pending:
            for seq in [s for s in self.pending if s <= self.last_seq]:
                del self.pending[seq]
                self.traces.pop(seq, None)
        if self.pending:
            self.fill()

    def fill(self) -> None:
        if not self._filling:
            self._filling = True
            self.hub.spawn(self._fill())

    async def _fill(self) -> None:
        start = self.last_seq
        try:
            while True:
                page = await self.hub.history(self.channel_id, after_seq=self.last_seq)
                for seq, _ in page:
                    self.pending.pop(seq, None)
                if page:
                    self.fan_out(Run([Delivery(self.name, seq, data) for seq, data in page]))
                if len(page) < PAGE:
                    break
        except Exception:
            metrics.GAP_FILLS.labels("failed").inc()
            log.exception("could not fill a gap in channel %s; closing its followers with 1012", self.name)
            self.end_followers(Unavailable("missed messages: resume"))
            self.pending.clear()
            self.traces.clear()
            return
        finally:
            self._filling = False
        metrics.GAP_FILLS.labels("filled").inc()
        if self.pending and self.last_seq == start:
            # cannot happen (a message is published after its row commits, and so did every lower seq); should
            # it anyway, deliver what is here rather than ask the database again and again
            log.error("channel %s: messages after seq %d are missing from the database", self.name, start)
            self.last_seq = min(self.pending) - 1
        if self.pending:
            self.settle()

    def fan_out(self, run: Run) -> None:
        if telemetry.tracer is None:
            self._fan_out(run)
            return
        # one span per message, never per socket or per run: a child of the publish that sent it, on whichever
        # instance; the run is still written to each follower at once
        spans = []
        for delivery in run.deliveries:
            parent = self.traces.pop(delivery.seq, None)
            span = telemetry.start_span(
                "realtime.fanout",
                parent=telemetry.context_of(parent) if parent is not None else None,
                kind=SpanKind.CONSUMER,
            )
            span.set_attribute("messaging.destination.name", service.topic(self.channel_id))
            span.set_attribute("keel.realtime.seq", delivery.seq)
            spans.append(span)
        starts: list[int] = []
        try:
            self._fan_out(run, starts)
            for delivery, span in zip(run.deliveries, spans, strict=True):
                span.set_attribute("keel.realtime.recipients", sum(start <= delivery.seq for start in starts))
        finally:
            for span in spans:
                span.end()

    def _fan_out(self, run: Run, starts: list[int] | None = None) -> int:
        """Write a run of messages to every follower that is live, each in one write; returns how many messages
        went out in all. `starts` gets the first seq each recipient got (the spans' recipients per message)."""
        first, last = run.first, run.last
        self.last_seq = last
        self.hub.progress.set()
        sent = 0
        # a copy: a peer may leave while we write (its task runs later, but stay safe)
        for peer, position in tuple(self.followers.items()):
            if position.backlog is not None:
                position.backlog.extend(run.deliveries)
                continue
            if position.seq >= last:
                continue
            part = run if position.seq < first else run.after(position.seq)
            peer.send_run(part, position)
            sent += len(part.deliveries)
            if starts is not None:
                starts.append(part.first)
        if sent:
            DELIVERED.inc(sent)
        return sent

    def end_followers(self, error: KeelError) -> None:
        for peer in tuple(self.followers):
            peer.end(error)


class Hub:
    def __init__(self, broker: Broker, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.broker = broker
        self._sessionmaker = sessionmaker
        self._feeds: dict[uuid.UUID, Feed] = {}
        self._peers: set[Peer] = set()
        self._no_peers = asyncio.Event()
        self._no_peers.set()
        self._sessions: dict[str, set[Peer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing = 0
        self._published: dict[uuid.UUID, int] = {}  # the highest seq published through this instance, per channel
        self._idle = asyncio.Event()
        self._idle.set()
        self.progress = asyncio.Event()  # set whenever a feed delivers: drain() waits on it
        self.draining = False
        broker.on_resume(self._on_resume)

    # connections

    def connect(self, peer: Peer) -> None:
        self._peers.add(peer)
        self._no_peers.clear()
        self._sessions.setdefault(peer.session, set()).add(peer)
        CONNECTIONS[peer.kind].inc()

    async def disconnect(self, peer: Peer) -> None:
        """Forget a peer that has closed: leave its channels, release feeds nobody follows any more."""
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        if not self._peers:
            self._no_peers.set()
        session = self._sessions.get(peer.session)
        if session is not None:
            session.discard(peer)
            if not session:
                del self._sessions[peer.session]
        CONNECTIONS[peer.kind].dec()
        for channel_id in list(peer.positions):
            await self.leave(peer, channel_id)

    def on_revoked(self, key: str) -> None:
        """The denylist's listener: close every socket and stream of a revoked session (SPEC §7: 4401)."""
        for peer in tuple(self._sessions.get(key, ())):
            peer.end(SessionRevoked("session revoked"))

    # channels

    async def join(self, peer: Peer, channel_id: uuid.UUID, since: int | None, *, hold: bool = False) -> int:
        """Follow a channel from `since` (None: from now); returns its last seq. ChannelNotFound if there is none.

        The peer is registered before its history is read, so nothing published meanwhile is missed: with a
        `since` behind the channel (or `hold`), live messages wait in the position's backlog until replay().
        """
        feed = await self._open(channel_id)
        start = feed.last_seq if since is None else since
        position = Position(start, replaying=hold or start < feed.last_seq)
        if peer in feed.followers:  # subscribing again: the new position replaces the old, one reference stays
            feed.refs -= 1
        feed.followers[peer] = peer.positions[channel_id] = position
        return feed.last_seq

    async def replay(self, peer: Peer, channel_id: uuid.UUID) -> None:
        """Send what `join(since=...)` asked for from the database, then what arrived live meanwhile, once each."""
        position = peer.positions.get(channel_id)
        feed = self._feeds.get(channel_id)
        if position is None or position.backlog is None or feed is None:
            return
        name = str(channel_id)
        # history is needed unless the backlog already continues from the position
        while position.seq < feed.last_seq and not (position.backlog and position.backlog[0].seq == position.seq + 1):
            page = await self.history(channel_id, after_seq=position.seq)
            for seq, data in page:
                position.seq = seq
                peer.send_message(Delivery(name, seq, data))
            if len(page) < PAGE:
                break
        backlog, position.backlog = position.backlog, None
        for delivery in backlog:
            if delivery.seq > position.seq:
                position.seq = delivery.seq
                peer.send_message(delivery)

    async def leave(self, peer: Peer, channel_id: uuid.UUID) -> bool:
        """Stop following a channel; False if the peer was not following it."""
        if peer.positions.pop(channel_id, None) is None:
            return False
        feed = self._feeds.get(channel_id)
        if feed is not None and feed.followers.pop(peer, None) is not None:
            await self._release(feed)
        return True

    async def _open(self, channel_id: uuid.UUID) -> Feed:
        feed = self._feeds.get(channel_id)
        if feed is None:
            feed = self._feeds[channel_id] = Feed(self, channel_id)
            feed.opened = asyncio.ensure_future(self._subscribe(feed))
        feed.refs += 1
        assert feed.opened is not None
        try:
            await asyncio.shield(feed.opened)
        except BaseException:
            await self._release(feed)
            raise
        return feed

    async def _subscribe(self, feed: Feed) -> Subscription:
        # subscribe first, then read last_seq: what is published in between waits in `pending`
        subscription = await self.broker.subscribe(service.topic(feed.channel_id), feed.on_message)
        try:
            async with self.session() as session:
                channel = await service.get_channel(session, feed.channel_id)
                feed.last_seq = channel.last_seq
        except BaseException:
            await subscription.close()
            raise
        feed.settle()  # what arrived while opening
        return subscription

    async def _release(self, feed: Feed) -> None:
        feed.refs -= 1
        if feed.refs > 0 or self._feeds.get(feed.channel_id) is not feed:
            return
        del self._feeds[feed.channel_id]
        if (subscription := feed.subscription()) is not None:
            await subscription.close()

    def feeds(self) -> tuple[Feed, ...]:
        return tuple(self._feeds.values())

    def watch(self) -> None:
        """Fill feeds whose channel's last_seq moved without the message arriving (keel.realtime.watch): for the
        scaled backend, where the instance that committed a message may die before it publishes."""
        self.spawn(SeqWatch(self).run())

    def session(self) -> AsyncSession:
        return self._sessionmaker()

    async def history(self, channel_id: uuid.UUID, *, after_seq: int) -> list[tuple[int, bytes]]:
        """A page of (seq, message JSON) after `after_seq`, oldest first."""
        async with self.session() as session:
            messages = await service.messages_after(session, channel_id, after_seq=after_seq, limit=PAGE)
        return [(m.seq, service.encode_message(m)) for m in messages]

    def _on_resume(self) -> None:
        """The broker's feed is back after an outage: read what every feed may have missed."""
        for feed in self._feeds.values():
            if feed.subscription() is not None:
                feed.fill()

    # publishing and shutdown

    @asynccontextmanager
    async def publishing(self) -> AsyncIterator[None]:
        """Wrap a publish so shutdown lets it finish before closing sockets."""
        self._publishing += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._publishing -= 1
            if not self._publishing:
                self._idle.set()

    def published(self, channel_id: uuid.UUID, seq: int) -> None:
        """Note a publish through this instance; shutdown waits for local followers to get it."""
        if seq > self._published.get(channel_id, 0):
            self._published[channel_id] = seq

    async def drain(self) -> None:
        """Shutdown: let in-flight publishes finish and reach local followers, then close everyone with 1001."""
        self.draining = True
        with suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self._idle.wait()
                while self._undelivered():
                    self.progress.clear()
                    await self.progress.wait()
        for peer in tuple(self._peers):
            peer.close(CLOSE_GOING_AWAY, "server shutting down")
        with suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await self._no_peers.wait()

    def _undelivered(self) -> bool:
        """Whether a local publish has yet to reach this instance's followers of its channel."""
        return any(
            (feed := self._feeds.get(channel_id)) is not None and feed.followers and feed.last_seq < seq
            for channel_id, seq in self._published.items()
        )

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        for feed in tuple(self._feeds.values()):
            if (subscription := feed.subscription()) is not None:
                await subscription.close()
        self._feeds.clear()
