"""A feed: one instance's subscription to one channel, shared by every socket and stream following it (keel.realtime.hub
opens and closes them).

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
from typing import TYPE_CHECKING, Final

import msgspec
from opentelemetry.trace import SpanKind

from keel import metrics, telemetry
from keel.errors import KeelError, Unavailable
from keel.realtime import service
from keel.realtime.peers import Delivery, Peer, Position, Run
from keel.shared.broker import Subscription

if TYPE_CHECKING:
    from keel.realtime.hub import Hub

log = logging.getLogger("keel.realtime")

PAGE: Final = 500  # messages per history query when replaying or filling a gap
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
