"""One instance's realtime fan-out: the sockets and streams connected to it, and a feed (keel.realtime.feed) per
channel in use, shared by every socket and stream following it; replay from the database, draining on shutdown."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import metrics
from keel.realtime import service
from keel.realtime.errors import CLOSE_GOING_AWAY, SessionRevoked
from keel.realtime.feed import PAGE, Feed
from keel.realtime.heartbeats import Heartbeats
from keel.realtime.peers import Delivery, Peer, Position
from keel.realtime.watch import SeqWatch
from keel.shared.broker import Broker, Subscription

log = logging.getLogger("keel.realtime")

DRAIN_TIMEOUT: Final = 5.0  # how long shutdown waits for in-flight publishes before closing sockets
# then how long it waits for the closed sockets and streams to go: a server that stops its connections as soon as
# the drain returns (Granian) would otherwise cut off close frames still queued for their writers
CLOSE_WAIT: Final = 1.0

CONNECTIONS: Final = {"ws": metrics.WS_CONNECTIONS, "sse": metrics.SSE_CONNECTIONS}


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
        self.heartbeats = Heartbeats()  # the keep-alives of the event streams written directly
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
