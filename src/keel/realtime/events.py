"""`GET /events?channel=…` (SPEC §8): Server-Sent Events, as pure ASGI.

Each event's `id:` is the stream's position in every channel it follows (`<channel>:<seq>` pairs joined by `,`),
so one `Last-Event-ID` resumes them all. Events are rendered when the hub delivers them (the id is the position
right after that message). Under `keel serve` they are written straight to the connection as the hub delivers them
(keel.http.direct): a stream following one channel gets the same bytes as every other such stream, built once per
message, and the stream's one task only waits on `receive` for the client to go away (a close or shutdown wakes
that wait, keel.http.direct's `wake`) while the hub's heartbeats write its keep-alives. Elsewhere the stream's
own task sends them through ASGI `send`, and a second small task watches for the client going away (the server's
`send` does not tell). A stream whose unsent events pass KEEL_WS_SEND_QUEUE (events, or that many of its largest
event's bytes) is ended: the client reconnects with Last-Event-ID and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any, Final

from keel.errors import Invalid
from keel.http.direct import DirectBody, chunk
from keel.http.errors import send_problem
from keel.http.scope import set_cookies_of
from keel.realtime.access import Realtime, Refused, admit, query_params
from keel.realtime.errors import CLOSE_GOING_AWAY, ChannelNotFound, TooSlow
from keel.realtime.heartbeats import KEEP_ALIVE, Heartbeats
from keel.realtime.peers import Delivery, Peer, Position, Run
from keel.shared.errors import OUTAGES
from keel.types import MAX_INT64

log = logging.getLogger("keel.realtime")

RETRY_MS: Final = 3000
MAX_CHANNELS: Final = 50
MESSAGE_EVENT: Final = "message"  # the event name of every message (EventSource's default)
CHANNEL_PARAM: Final = "channel"
LAST_EVENT_ID_PARAM: Final = "last_event_id"  # for clients that cannot set the Last-Event-ID header
_PAIR: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9]{1,19}"
#: Every `id:` the server writes (Stream.event_id): a `<channel id>:<seq>` pair for each channel, joined by `,`.
EVENT_ID_PATTERN: Final = rf"^{_PAIR}(,{_PAIR})*$"
_MESSAGE_START: Final = b"event: %s\nid: " % MESSAGE_EVENT.encode()
_KEEP_ALIVE: Final = b": keep-alive\n\n"
_KEEP_ALIVE_CHUNK: Final = chunk(_KEEP_ALIVE)
# ASCII digits only: int() would also take "+5", " 5", "1_000" and other scripts' digits
_SEQ: Final = re.compile(r"[0-9]{1,19}")
HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass events through unbuffered
]


class BadStreamRequest(Invalid):
    code = "realtime.bad_stream_request"
    title = "Bad event stream request"


class Stream(Peer):
    """One event stream."""

    kind = "sse"

    def __init__(self, session: str, send_queue: int) -> None:
        super().__init__(session, send_queue)
        self.pending: list[bytes] = []
        self._wake: asyncio.Future[None] | None = None
        self.direct: DirectBody | None = None  # set once the response has started, under `keel serve`
        self._largest = 256  # the largest chunk written directly so far: the backlog bound is send_queue of these

    def send_message(self, delivery: Delivery) -> None:
        if self.closing:
            return
        if self.direct is not None:
            if len(self.positions) == 1:
                self.write(delivery.sse_chunk(_shared_chunk))
            else:
                self.write(chunk(self._event(delivery)))
            return
        if len(self.pending) >= self.send_queue:
            self.end(TooSlow("too slow"))  # ends the stream; the client resumes with Last-Event-ID
            return
        self.pending.append(self._event(delivery))
        self._wakeup()

    def send_run(self, run: Run, position: Position) -> None:
        if self.direct is not None and len(self.positions) == 1 and not self.closing:
            # a committed batch's events in one write to the connection
            position.seq = run.last
            chunks, largest = run.sse_chunks(_shared_chunk)
            self.write(chunks, largest)
        else:  # the event ids of a stream following several channels are each message's own
            super().send_run(run, position)

    def _event(self, delivery: Delivery) -> bytes:
        return b"%s%s\ndata: %s\n\n" % (_MESSAGE_START, self.event_id(), delivery.payload)

    def write(self, framed: bytes, largest: int = 0) -> None:
        """Write chunks straight to the connection (`largest`: the largest of them, if several); a stream that far
        behind (or gone) is ended instead."""
        assert self.direct is not None
        if self.closing:
            return
        largest = largest or len(framed)
        if largest > self._largest:
            self._largest = largest
        if not self.direct.write(framed, self.send_queue * self._largest):
            self.end(TooSlow("too slow"))
            self.direct.abort()  # else the response's end would wait for the client to read the backlog

    def event_id(self) -> bytes:
        return ",".join(f"{channel}:{position.seq}" for channel, position in self.positions.items()).encode()

    def close(self, code: int, reason: str) -> None:
        self.closing = True
        if self.direct is not None:
            self.direct.wake()  # its task waits in `receive` (_follow_directly)
        self._wakeup()

    def beat(self) -> None:
        """Write a keep-alive (a direct stream's, from the hub's heartbeats: its task need not wake for it)."""
        if not self.closing and self.direct is not None:
            self.write(_KEEP_ALIVE_CHUNK)

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self) -> None:
        """Until there is something to write, the stream closes, or KEEP_ALIVE seconds pass."""
        if self.pending or self.closing:
            return
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        timer = loop.call_later(KEEP_ALIVE, self._wakeup)
        try:
            await self._wake
        finally:
            timer.cancel()
            self._wake = None


def _shared_chunk(delivery: Delivery) -> bytes:
    # a stream that follows only this channel is at exactly this position once it has the message
    return chunk(b"%s%s:%d\ndata: %s\n\n" % (_MESSAGE_START, delivery.channel.encode(), delivery.seq, delivery.payload))


def parse_request(scope: Any) -> tuple[list[uuid.UUID], dict[uuid.UUID, int]]:
    """The channels asked for, and the resume positions of Last-Event-ID (header, or `?last_event_id=`)."""
    params = query_params(scope)
    try:
        channels = list(dict.fromkeys(uuid.UUID(value) for value in params.get(CHANNEL_PARAM, [])))
    except ValueError:
        raise BadStreamRequest("Every `channel` is a channel id (a UUID).", loc=("query", "channel")) from None
    if not channels or len(channels) > MAX_CHANNELS:
        raise BadStreamRequest(
            f"Follow 1 to {MAX_CHANNELS} channels: /events?channel=<id>&channel=<id>.", loc=("query", "channel")
        )
    header = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"last-event-id"), None)
    last_event_id = header if header is not None else next(iter(params.get(LAST_EVENT_ID_PARAM, [])), "")
    resume: dict[uuid.UUID, int] = {}
    for pair in filter(None, last_event_id.split(",")):
        channel, _, seq = pair.strip().rpartition(":")
        try:
            channel_id = uuid.UUID(channel)
        except ValueError:
            channel_id = None
        if channel_id is None or _SEQ.fullmatch(seq) is None or int(seq) > MAX_INT64:
            raise BadStreamRequest(
                "Last-Event-ID is a list of <channel id>:<seq> pairs joined by `,`, each seq a whole number "
                f"from 0 to {MAX_INT64}.",
                loc=("header", "Last-Event-ID") if header is not None else ("query", "last_event_id"),
            )
        resume[channel_id] = int(seq)
    return channels, resume


async def serve_events(realtime: Realtime, scope: Any, receive: Any, send: Any) -> None:
    try:
        claims = await admit(realtime, scope)
        try:
            channels, resume = parse_request(scope)
        except BadStreamRequest as exc:
            raise Refused(exc) from None
        slot = realtime.streams.hold(claims.user_id)
    except Refused as refusal:
        await _refuse(send, refusal)
        return
    with slot:  # released however the stream ends: refused below, ended by either side, or an error
        stream = Stream(claims.revocation_key, realtime.send_queue)
        realtime.hub.connect(stream)
        try:
            cookies = set_cookies_of(scope)  # a renewed session's, on the stream's own response
            await _serve(
                realtime, stream, channels, resume, scope, receive, send, [*HEADERS, *cookies] if cookies else HEADERS
            )
        finally:
            stream.closing = True
            await realtime.hub.disconnect(stream)


async def _serve(
    realtime: Realtime,
    stream: Stream,
    channels: list[uuid.UUID],
    resume: dict[uuid.UUID, int],
    scope: Any,
    receive: Any,
    send: Any,
    headers: list[tuple[bytes, bytes]],
) -> None:
    hub = realtime.hub
    try:
        for channel in channels:  # held: nothing is delivered until every channel has its position
            await hub.join(stream, channel, resume.get(channel), hold=True)
    except ChannelNotFound as exc:
        await _refuse(send, Refused(exc))
        return
    except OUTAGES as exc:  # the database could not say whether the channels exist
        await _refuse(send, Refused.outage(exc))
        return

    await send({"type": "http.response.start", "status": 200, "headers": headers})
    # the position comes first too, with no data (no event fires, but EventSource keeps it): a stream dropped
    # before its first message still reconnects with a Last-Event-ID, and misses nothing published meanwhile
    opening = b"retry: %d\nid: %s\n\n" % (RETRY_MS, stream.event_id())
    stream.direct = DirectBody.of(scope)
    log.debug("event stream opened: %s", "direct writes" if stream.direct else "ASGI sends")  # tests hold to this
    if stream.direct is not None:
        stream.write(chunk(opening))
        for channel in channels:
            await hub.replay(stream, channel)
        await _follow_directly(stream, receive, hub.heartbeats)
    else:
        watcher = asyncio.get_running_loop().create_task(_watch(receive, stream))
        try:
            await send({"type": "http.response.body", "body": opening, "more_body": True})
            for channel in channels:
                await hub.replay(stream, channel)
            await _follow(stream, send)
        finally:
            watcher.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _follow_directly(stream: Stream, receive: Any, heartbeats: Heartbeats) -> None:
    """Hold a direct stream open until the client goes or the stream closes: the hub writes its events, its
    heartbeats the keep-alives, and this one task waits in `receive`. The ASGI path's two tasks (the second's
    coroutine, the first's wait coroutine and future) and its keep-alive timer were 0.75 KiB and 0.57 KiB of each
    idle stream's heap (bench/sse_memory.py, 2026-12-04)."""
    heartbeats.add(stream)
    try:
        while not stream.closing:
            if (await receive())["type"] == "http.disconnect":
                stream.close(CLOSE_GOING_AWAY, "client gone")
    finally:
        stream.closing = True
        heartbeats.discard(stream)


async def _follow(stream: Stream, send: Any) -> None:
    """Send a stream's events and keep-alives through ASGI `send` until it closes."""
    while not stream.closing:
        await stream.wait()
        if stream.pending:
            body = b"".join(stream.pending)
            stream.pending.clear()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        elif not stream.closing:
            await send({"type": "http.response.body", "body": _KEEP_ALIVE, "more_body": True})


async def _refuse(send: Any, refusal: Refused) -> None:
    await send_problem(send, refusal.status, refusal.body, refusal.headers)


async def _watch(receive: Any, stream: Stream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.close(CLOSE_GOING_AWAY, "client gone")
