"""`GET /events?channel=…` (SPEC §8): Server-Sent Events, as pure ASGI.

Each event's `id:` is the stream's position in every channel it follows (`<channel>:<seq>` pairs joined by `,`),
so one `Last-Event-ID` resumes them all. Events are rendered when the hub delivers them (the id is the position
right after that message) and written by the stream's own task; a second small task only watches for the client
going away (the server's `send` does not tell). A stream whose unsent events pass KEEL_WS_SEND_QUEUE is ended:
the client reconnects with Last-Event-ID and loses nothing.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any, Final

from keel.errors import Invalid
from keel.http.errors import send_problem
from keel.http.scope import set_cookies_of
from keel.realtime.access import Realtime, Refused, admit, query_params
from keel.realtime.errors import CLOSE_GOING_AWAY, ChannelNotFound, TooSlow
from keel.realtime.peers import Delivery, Peer
from keel.shared.errors import OUTAGES
from keel.types import MAX_INT64

KEEP_ALIVE: Final = 15.0
RETRY_MS: Final = 3000
MAX_CHANNELS: Final = 50
MESSAGE_EVENT: Final = "message"  # the event name of every message (EventSource's default)
CHANNEL_PARAM: Final = "channel"
LAST_EVENT_ID_PARAM: Final = "last_event_id"  # for clients that cannot set the Last-Event-ID header
_PAIR: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9]{1,19}"
#: Every `id:` the server writes (Stream.event_id): a `<channel id>:<seq>` pair for each channel, joined by `,`.
EVENT_ID_PATTERN: Final = rf"^{_PAIR}(,{_PAIR})*$"
_MESSAGE_START: Final = b"event: %s\nid: " % MESSAGE_EVENT.encode()
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

    def __init__(self, session_id: uuid.UUID, send_queue: int) -> None:
        super().__init__(session_id, send_queue)
        self.pending: list[bytes] = []
        self._wake: asyncio.Future[None] | None = None

    def send_message(self, delivery: Delivery) -> None:
        if self.closing:
            return
        if len(self.pending) >= self.send_queue:
            self.end(TooSlow("too slow"))  # ends the stream; the client resumes with Last-Event-ID
            return
        self.pending.append(b"%s%s\ndata: %s\n\n" % (_MESSAGE_START, self.event_id(), delivery.payload))
        self._wakeup()

    def event_id(self) -> bytes:
        return ",".join(f"{channel}:{position.seq}" for channel, position in self.positions.items()).encode()

    def close(self, code: int, reason: str) -> None:
        self.closing = True
        self._wakeup()

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
        stream = Stream(claims.session_id, realtime.send_queue)
        realtime.hub.connect(stream)
        try:
            cookies = set_cookies_of(scope)  # a renewed session's, on the stream's own response
            await _serve(
                realtime, stream, channels, resume, receive, send, [*HEADERS, *cookies] if cookies else HEADERS
            )
        finally:
            stream.closing = True
            await realtime.hub.disconnect(stream)


async def _serve(
    realtime: Realtime,
    stream: Stream,
    channels: list[uuid.UUID],
    resume: dict[uuid.UUID, int],
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

    watcher = asyncio.get_running_loop().create_task(_watch(receive, stream))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # the position comes first too, with no data (no event fires, but EventSource keeps it): a stream dropped
        # before its first message still reconnects with a Last-Event-ID, and misses nothing published meanwhile
        opening = b"retry: %d\nid: %s\n\n" % (RETRY_MS, stream.event_id())
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        for channel in channels:
            await hub.replay(stream, channel)
        while not stream.closing:
            await stream.wait()
            if stream.pending:
                chunk = b"".join(stream.pending)
                stream.pending.clear()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            elif not stream.closing:
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()


async def _refuse(send: Any, refusal: Refused) -> None:
    await send_problem(send, refusal.status, refusal.body, refusal.headers)


async def _watch(receive: Any, stream: Stream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.close(CLOSE_GOING_AWAY, "client gone")
