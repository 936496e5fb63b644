"""What the hub delivers to, and what it delivers: a follower (a WebSocket or an SSE stream), its position in each
channel, and one message on its way to every follower of a channel."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import ClassVar, Literal

from keel.errors import KeelError
from keel.identity.denylist import session_key
from keel.realtime import frames
from keel.realtime.errors import close_code


class Delivery:
    """One message on its way to a feed's followers; each wire form is built once, by the first that needs it."""

    __slots__ = ("_sse_chunk", "_ws_frame", "channel", "payload", "seq")

    def __init__(self, channel: str, seq: int, payload: bytes) -> None:
        self.channel = channel
        self.seq = seq
        self.payload = payload  # the message's JSON
        self._ws_frame: bytes | None = None
        self._sse_chunk: bytes | None = None

    def ws_frame(self, build: Callable[[bytes], bytes]) -> bytes:
        """The WebSocket frame carrying this message, built by `build` from its JSON frame once per message."""
        if self._ws_frame is None:
            self._ws_frame = build(frames.message(self.channel, self.payload))
        return self._ws_frame

    def sse_chunk(self, build: Callable[[Delivery], bytes]) -> bytes:
        """The event of this message for a stream following only its channel (the same bytes for all), built once."""
        if self._sse_chunk is None:
            self._sse_chunk = build(self)
        return self._sse_chunk


class Position:
    """Where one follower is in one channel: the last seq it got, and what arrived live while it replayed."""

    __slots__ = ("backlog", "seq")

    def __init__(self, seq: int, *, replaying: bool) -> None:
        self.seq = seq
        self.backlog: list[Delivery] | None = [] if replaying else None


class Peer:
    """A WebSocket or an SSE stream, as the hub sees it."""

    kind: ClassVar[Literal["ws", "sse"]]

    def __init__(self, session_id: uuid.UUID, send_queue: int) -> None:
        self.session = session_key(session_id)  # its session's denylist key: a revocation closes it
        self.positions: dict[uuid.UUID, Position] = {}
        self.send_queue = send_queue  # how far behind it may fall before it is closed
        self.closing = False

    def send_message(self, delivery: Delivery) -> None:
        """Write `delivery` now, without awaiting; a peer too far behind closes itself instead."""
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        """Start closing (idempotent); the peer's own task then calls Hub.disconnect."""
        raise NotImplementedError

    def end(self, error: KeelError) -> None:
        """Close because of `error`, with the close code of its kind."""
        self.close(close_code(error), error.detail)
