"""`GET /ws` (SPEC §7): a pure-ASGI endpoint, one task per socket (the server's), frames handled in order.

Fan-out writes to a socket synchronously. Under uvicorn's wsproto implementation (what `keel serve` runs) a frame
is encoded once per message and written straight to each socket's transport, the frames of a run of messages (a
committed batch, keel.realtime.hub) joined in one write; the transport's unsent backlog is
the send queue, bounded at KEEL_WS_SEND_QUEUE frames' worth of bytes (bench/SPIKES.md: awaiting each socket, or a
task per socket, is 2-3x slower at 5 000 sockets). Under any other ASGI server a socket gets a bounded queue and
a writer task instead. Either way a socket past its bound is closed with 1013 at once and never delays the rest.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from typing import Any, Final

import msgspec

from keel import telemetry
from keel.errors import Unavailable
from keel.http.errors import problem_headers
from keel.http.scope import set_cookies_of, set_handshake_status
from keel.idempotency.errors import KeyInUse, KeyReused
from keel.idempotency.service import Claim, Outcome
from keel.identity.tokens import Claims
from keel.realtime import frames, service
from keel.realtime.access import Realtime, Refused, admit, frame_allowed
from keel.realtime.committer import ShuttingDown
from keel.realtime.errors import ChannelNotFound, TooSlow
from keel.realtime.peers import Delivery, Peer, Position, Run
from keel.realtime.schemas import Author, MessageCreate, MessageRead
from keel.shared.errors import OUTAGES

log = logging.getLogger("keel.realtime")
_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(MessageRead)

CLOSE_TIMEOUT: Final = 5.0  # a closing socket that has not taken its close frame by then is dropped
# what `keel serve` configures the server with (SPEC §7): a larger frame closes with 1009, and a socket that has not
# answered a protocol ping within PING_TIMEOUT closes with 1011
MAX_FRAME_BYTES: Final = 64 * 1024
PING_INTERVAL: Final = 20.0
PING_TIMEOUT: Final = 20.0


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server-to-client text frame (RFC 6455 §5.2)."""
    return _frame(0x81, payload)


def close_frame(code: int, reason: str) -> bytes:
    return _frame(0x88, struct.pack("!H", code) + reason.encode()[:123])


def _frame(first_byte: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first_byte, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first_byte, 126, length)
    else:
        header = struct.pack("!BBQ", first_byte, 127, length)
    return header + payload


class Socket(Peer):
    """An accepted WebSocket."""

    kind = "ws"

    def send(self, frame: bytes) -> None:
        """Queue one JSON frame for the client."""
        raise NotImplementedError

    async def closed(self) -> None:
        """After the client has gone: release what this socket holds."""


class _SpentHandshake:
    """What a WSConnection needs of its handshake once the connection is open: `events()`, which has none left."""

    __slots__ = ()

    def events(self) -> Iterator[Any]:
        return iter(())


_SPENT_HANDSHAKE: Final = _SpentHandshake()
# shared by every TransportSocket's `writable` event and never appended to: only uvicorn's `send` waits on that event,
# and a TransportSocket writes around `send`
_NO_WAITERS: Final[deque[Any]] = deque()


class TransportSocket(Socket):
    """Writes frames straight to uvicorn's wsproto connection, as its own `send` would, minus the await.

    Frame bytes carry no per-connection state (no compression: `keel serve` turns per-message-deflate off), so
    the bytes built for one socket are right for all. Closing mirrors uvicorn's own `websocket.close` handling
    (close frame, `close_sent`, a disconnect for the app, a close timer) except that a client that never takes
    its close frame is dropped rather than waited for.
    """

    def __init__(self, protocol: Any, claims: Claims, send_queue: int) -> None:
        super().__init__(claims.revocation_key, send_queue)
        self._protocol = protocol
        self._transport: asyncio.Transport = protocol.transport
        self._largest = 64  # the largest frame sent so far: the backlog bound is send_queue of these
        # memory held per idle socket for nothing (issue 16: 50 000 sockets at <= 16 KiB each): the handshake's h11
        # connection and buffers (the open connection no longer reads them), and the waiters deque of an event
        conn = protocol.conn
        if conn.connection is not None:
            conn.handshake = _SPENT_HANDSHAKE
        protocol.writable._waiters = _NO_WAITERS

    @staticmethod
    def supports(send: Any) -> Any:
        """uvicorn's WSProtocol behind `send`, when this is one with per-message-deflate off; else None."""
        protocol = getattr(send, "__self__", None)
        if (
            protocol is None
            or all(cls.__name__ != "WSProtocol" for cls in type(protocol).__mro__)  # keel serve's is a subclass
            or not all(
                hasattr(protocol, name)
                for name in ("transport", "close_sent", "close_timer", "queue", "config", "conn", "writable")
            )
            or not hasattr(protocol.conn, "handshake")
            or not hasattr(protocol.writable, "_waiters")
        ):
            return None
        return None if protocol.config.ws_per_message_deflate else protocol

    def send_message(self, delivery: Delivery) -> None:
        self._write(delivery.ws_frame(text_frame))

    def send_run(self, run: Run, position: Position) -> None:
        # a committed batch's frames in one write: one send() per socket per batch instead of per message
        position.seq = run.last
        frames, largest = run.ws_frames(text_frame)
        self._write(frames, largest)

    def send(self, frame: bytes) -> None:
        self._write(text_frame(frame))

    def _write(self, frame: bytes, largest: int = 0) -> None:
        """Write one frame, or several joined (`largest`: the largest of them); past the send queue, close."""
        if self.closing:
            return
        size = len(frame)
        largest = largest or size
        if largest > self._largest:
            self._largest = largest
        if self._transport.get_write_buffer_size() + size > self.send_queue * self._largest:
            self.end(TooSlow("too slow: send queue full"))
            return
        self._transport.write(frame)

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        protocol, transport = self._protocol, self._transport
        if protocol.close_sent or transport.is_closing():
            return
        protocol.close_sent = True
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        transport.write(close_frame(code, reason))
        if protocol.read_paused:  # let the client's close frame in
            protocol.read_paused = False
            transport.resume_reading()
        protocol.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)


class QueuedSocket(Socket):
    """Any other ASGI server: a bounded queue per socket and a task that awaits `send` for each frame."""

    def __init__(self, send: Any, claims: Claims, send_queue: int) -> None:
        super().__init__(claims.revocation_key, send_queue)
        self._send = send
        self._queue: asyncio.Queue[bytes | tuple[int, str]] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write_all())

    def send_message(self, delivery: Delivery) -> None:
        self.send(frames.message(delivery.channel, delivery.payload))

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        if self._queue.qsize() >= self.send_queue:
            self.end(TooSlow("too slow: send queue full"))
            return
        self._queue.put_nowait(frame)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self._queue.put_nowait((code, reason))

    async def _write_all(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, tuple):
                code, reason = item
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
                return
            await self._send({"type": "websocket.send", "text": item.decode()})

    async def closed(self) -> None:
        self._writer.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await self._writer


async def serve_websocket(realtime: Realtime, scope: Any, receive: Any, send: Any) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    # the handshake's span ends once the socket is accepted or refused, and the socket's life is not in it
    span = telemetry.start_server_span(scope)
    try:
        claims = await admit(realtime, scope)
        slot = realtime.streams.hold(claims.user_id)
    except Refused as refusal:
        try:
            await _refuse(scope, send, refusal)
        finally:
            if span is not None:
                span.close(refusal.status)
        return
    except BaseException as exc:
        if span is not None:
            span.close(error=exc)
        raise
    if span is not None:
        span.close(101)
    with slot:  # released however the socket ends: closed by either side, the client gone, or an error
        cookies = set_cookies_of(scope)  # a renewed session's, on the 101
        await send({"type": "websocket.accept", "headers": cookies} if cookies else {"type": "websocket.accept"})
        set_handshake_status(scope, 101)
        protocol = TransportSocket.supports(send)
        socket: Socket = (
            TransportSocket(protocol, claims, realtime.send_queue)
            if protocol is not None
            else QueuedSocket(send, claims, realtime.send_queue)
        )
        log.debug("websocket accepted: %s writes", type(socket).__name__)  # a test holds the fast path to this
        hub = realtime.hub
        hub.connect(socket)
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                text = message.get("text")
                if text is None:
                    socket.send(frames.error(frames.FrameError("bad_frame", "Frames are JSON text, not binary.")))
                    continue
                await _handle(realtime, scope, socket, claims, text)
        finally:
            socket.closing = True
            await hub.disconnect(socket)
            await socket.closed()


async def _handle(realtime: Realtime, scope: Any, socket: Socket, claims: Claims, text: str) -> None:
    hub = realtime.hub
    ref = None
    try:
        frame = frames.decode(text)
        ref = frame.ref
        if isinstance(frame, frames.Ping):
            socket.send(frames.encode(frames.Pong(frame.ref)))
        elif isinstance(frame, frames.Subscribe):
            # limited like a publish, before the database is asked whether the channel exists
            wait = await frame_allowed(realtime, scope)
            if wait is not None:
                raise frames.FrameError("rate_limited", f"Too many subscribes; retry in {wait} s.", frame.ref)
            last_seq = await hub.join(socket, frame.channel, frame.since)
            socket.send(frames.encode(frames.Subscribed(frame.channel, last_seq)))
            await hub.replay(socket, frame.channel)
        elif isinstance(frame, frames.Unsubscribe):
            await hub.leave(socket, frame.channel)
            socket.send(frames.encode(frames.Unsubscribed(frame.channel)))
        elif isinstance(frame, frames.Publish):
            await _publish(realtime, scope, socket, claims, frame)
    except frames.FrameError as exc:
        socket.send(frames.error(exc))
    except ChannelNotFound as exc:
        socket.send(frames.error(frames.FrameError("not_found", str(exc), ref)))
    except ShuttingDown as exc:  # a publish after the committer closed: resume on another instance
        socket.end(exc)
    except OUTAGES as exc:
        # the database is down: nothing is lost (a publish did not commit, a replay did not finish), and the
        # client resumes with `since` once it reconnects
        log.warning("realtime frame failed, closing with 1012: %s: %s", type(exc).__name__, exc)
        socket.end(Unavailable("service unavailable: resume later"))


async def _publish(realtime: Realtime, scope: Any, socket: Socket, claims: Claims, frame: frames.Publish) -> None:
    hub = realtime.hub
    if hub.draining:
        return  # the socket closes with 1001 in a moment; the client publishes again elsewhere
    wait = await frame_allowed(realtime, scope)
    if wait is not None:
        raise frames.FrameError("rate_limited", f"Too many publishes; retry in {wait} s.", frame.ref)
    attempt = None
    if frame.idempotency_key is not None:  # the REST post's operation and canonical request: one key, one message
        request = str(frame.channel).encode() + b"\0" + _encoder.encode(MessageCreate(frame.body))
        attempt = realtime.idempotency.attempt(
            scope="user:" + claims.subject, operation=service.POST_MESSAGE, key=frame.idempotency_key, request=request
        )

    async def post(claim: Claim | None) -> MessageRead:
        if claim is not None:
            await claim.hold()  # the batch's transaction records it; the claim's connection goes back
        draft = service.Draft(Author(claims.user_id, claims.username), frame.body, claim)
        return await realtime.committer.publish(frame.channel, draft)

    result: MessageRead | Outcome
    async with hub.publishing():
        if attempt is None:
            result = await post(None)  # nothing to guard, so no session (as the REST post, keel.realtime.router)
        else:
            try:
                async with hub.session() as session:
                    result = await realtime.idempotency.run(session, attempt, post)
            except (KeyReused, KeyInUse) as exc:  # §7 has no code of their own: `invalid`, the detail says which
                raise frames.FrameError("invalid", f"{exc.code}: {exc.detail}", frame.ref) from None
    if isinstance(result, Outcome):  # a replay: the message went out the first time, it is not sent again
        message = _message_decoder.decode(result.body)
    else:
        message = result
        hub.published(frame.channel, message.seq)
    socket.send(frames.encode(frames.Published(frame.ref, message)))


async def _refuse(scope: Any, send: Any, refusal: Refused) -> None:
    """Answer the handshake with the problem document, or a bare 403 where the server cannot send a body."""
    if "websocket.http.response" in scope.get("extensions", {}):
        set_handshake_status(scope, refusal.status)
        headers = problem_headers(refusal.headers, refusal.body)
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": refusal.body, "more_body": False})
    else:
        set_handshake_status(scope, 403)  # what the server answers a handshake closed before accept with
        await send({"type": "websocket.close", "code": 1008})
