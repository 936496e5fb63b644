"""What the hub delivers to, and what it delivers: a follower (a WebSocket or an SSE stream), its position in each
channel, one message on its way to every follower of a channel, and a run of consecutive messages that goes to each
follower as one write."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import ClassVar, Literal

from keel.errors import KeelError
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


class Run:
    """Consecutive messages of one channel (seq N, N+1, …) that a feed delivers together: what one committed batch
    became. Each follower that gets all of them gets them in one socket write; the joined wire forms are built once
    per run, by the first follower that needs them."""

    __slots__ = ("_sse_chunks", "_ws_frames", "deliveries")

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self._ws_frames: tuple[bytes, int] | None = None
        self._sse_chunks: tuple[bytes, int] | None = None

    @property
    def first(self) -> int:
        return self.deliveries[0].seq

    @property
    def last(self) -> int:
        return self.deliveries[-1].seq

    def after(self, seq: int) -> Run:
        """The part of this run after `seq` (a follower that already had some of it)."""
        return Run([d for d in self.deliveries if d.seq > seq])

    def ws_frames(self, build: Callable[[bytes], bytes]) -> tuple[bytes, int]:
        """Every message's WebSocket frame (Delivery.ws_frame) concatenated, so one write carries them all, and the
        largest of them (what send-queue bounds count)."""
        if self._ws_frames is None:
            self._ws_frames = _joined([d.ws_frame(build) for d in self.deliveries])
        return self._ws_frames

    def sse_chunks(self, build: Callable[[Delivery], bytes]) -> tuple[bytes, int]:
        """Every message's shared SSE chunk (Delivery.sse_chunk) concatenated, and the largest of them."""
        if self._sse_chunks is None:
            self._sse_chunks = _joined([d.sse_chunk(build) for d in self.deliveries])
        return self._sse_chunks


def _joined(parts: list[bytes]) -> tuple[bytes, int]:
    return b"".join(parts), max(map(len, parts))


class Position:
    """Where one follower is in one channel: the last seq it got, and what arrived live while it replayed."""

    __slots__ = ("backlog", "seq")

    def __init__(self, seq: int, *, replaying: bool) -> None:
        self.seq = seq
        self.backlog: list[Delivery] | None = [] if replaying else None


class Peer:
    """A WebSocket or an SSE stream, as the hub sees it."""

    kind: ClassVar[Literal["ws", "sse"]]

    def __init__(self, session: str, send_queue: int) -> None:
        self.session = session  # its session's denylist key (Claims.revocation_key): a revocation closes it
        self.positions: dict[uuid.UUID, Position] = {}
        self.send_queue = send_queue  # how far behind it may fall before it is closed
        self.closing = False

    def send_message(self, delivery: Delivery) -> None:
        """Write `delivery` now, without awaiting; a peer too far behind closes itself instead."""
        raise NotImplementedError

    def send_run(self, run: Run, position: Position) -> None:
        """Write every message of `run` now, in order, moving `position` to each as it goes (an SSE event's id is
        the position right after its message). A peer that can write the whole run at once overrides this."""
        for delivery in run.deliveries:
            position.seq = delivery.seq
            self.send_message(delivery)

    def close(self, code: int, reason: str) -> None:
        """Start closing (idempotent); the peer's own task then calls Hub.disconnect."""
        raise NotImplementedError

    def end(self, error: KeelError) -> None:
        """Close because of `error`, with the close code of its kind."""
        self.close(close_code(error), error.detail)
