"""The WebSocket frame protocol of SPEC §7: client frames decoded with precise error codes, server frames encoded.

A well-formed frame costs one msgspec decode; only a failed decode pays for working out which error it was.
Client frames refuse unknown members, so a frame that decodes is one flat object: JSON nested deeper than SPEC
§2's 64 levels can only fail, and costs no depth check on the way in.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from keel.realtime.schemas import MessageBody, MessageRead
from keel.types import Position

Ref = Annotated[str, Meta(max_length=128)] | int
# SPEC §6's Idempotency-Key, as a member of a publish frame: 1-255 visible ASCII characters
IdempotencyKey = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern="^[\\x21-\\x7E]+$",
        description="Makes a retried publish safe: a second publish with this key within 24 h (by the same user, "
        "with the same channel and body) answers `published` with the first one's message and is not sent again; "
        "with another channel or body it is refused (`invalid`), and while the first is in flight too.",
    ),
]
ErrorCode = Literal["bad_frame", "unknown_type", "not_found", "invalid", "rate_limited"]


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", forbid_unknown_fields=True):
    """Follow a channel; with `since`, first every message after that seq, then live ones, no gap, no duplicate."""

    channel: uuid.UUID
    since: Position | None = None
    ref: Ref | None = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type", forbid_unknown_fields=True):
    """Stop following a channel."""

    channel: uuid.UUID
    ref: Ref | None = None


class Publish(msgspec.Struct, tag="publish", tag_field="type", forbid_unknown_fields=True):
    """Post a message to a channel (rate limited like REST); it goes to every subscriber, the sender included."""

    channel: uuid.UUID
    body: MessageBody  # REST's own rule: NUL refused before a publish reaches the database
    ref: Ref | None = None
    idempotency_key: IdempotencyKey | None = None


class Ping(msgspec.Struct, tag="ping", tag_field="type", forbid_unknown_fields=True):
    """An application-level ping; the server answers pong (it also sends protocol pings of its own)."""

    ref: Ref | None = None


ClientFrame = Subscribe | Unsubscribe | Publish | Ping
TYPES: Final = frozenset(("subscribe", "unsubscribe", "publish", "ping"))


class FrameError(Exception):
    """A client frame that cannot be served; becomes an error frame, and the socket stays open."""

    def __init__(self, code: ErrorCode, detail: str, ref: Ref | None = None) -> None:
        super().__init__(detail)
        self.code: ErrorCode = code
        self.detail = detail
        self.ref = ref


class _Envelope(msgspec.Struct):
    """What a diagnosis reads of a frame that failed to decode: its type and ref; every other member is skipped."""

    type: object = None
    ref: object = None


_decoder = msgspec.json.Decoder(ClientFrame)
_envelope = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


def decode(data: str | bytes) -> ClientFrame:
    """The client frame in `data`, or FrameError saying what is wrong with it (echoing its `ref`)."""
    try:
        frame: ClientFrame = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:  # msgspec recurses per nesting level, even to skip
        raise _diagnose(data, exc) from None
    return frame


def _diagnose(data: str | bytes, error: msgspec.DecodeError | RecursionError) -> FrameError:
    try:
        raw = _envelope.decode(data)
    except RecursionError:
        return FrameError("bad_frame", "A frame is a flat JSON object; this one is nested too deeply.")
    except msgspec.DecodeError:
        return FrameError("bad_frame", "A frame is a JSON object.")
    ref = raw.ref
    echoed = ref if isinstance(ref, str | int) and not isinstance(ref, bool) else None
    kind = raw.type
    if not isinstance(kind, str):
        return FrameError("bad_frame", 'A frame needs a string "type".', echoed)
    if kind not in TYPES:
        return FrameError("unknown_type", f"Unknown frame type {kind!r}; expected one of {sorted(TYPES)}.", echoed)
    if isinstance(error, RecursionError):
        return FrameError("bad_frame", "A frame is a flat JSON object; this one is nested too deeply.", echoed)
    return FrameError("invalid", str(error), echoed)


# server frames: small structs encoded by msgspec, except `message`, which is assembled from the already-encoded
# message so a fan-out never encodes it again (MessageFrame describes it; a test holds the two byte-equal)


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="type"):
    """The channel is followed; `last_seq` is its latest seq now (replayed messages, if any, follow)."""

    channel: uuid.UUID
    last_seq: int


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="type"):
    """The channel is no longer followed."""

    channel: uuid.UUID


class Published(msgspec.Struct, tag="published", tag_field="type"):
    """The sender's publish committed, as this message (the sender also gets it as a `message` frame)."""

    ref: Ref | None
    message: MessageRead


class MessageFrame(msgspec.Struct, tag="message", tag_field="type"):
    """A message in a followed channel, to every subscriber, the sender included, in seq order."""

    channel: uuid.UUID
    message: MessageRead


class Pong(msgspec.Struct, tag="pong", tag_field="type", omit_defaults=True):
    """The answer to a ping, echoing its `ref`."""

    ref: Ref | None = None


class Error(msgspec.Struct, tag="error", tag_field="type", omit_defaults=True):
    """A frame that could not be served, echoing its `ref` when it had one; the socket stays open."""

    code: ErrorCode
    detail: str
    ref: Ref | None = None


ServerFrame = Subscribed | Unsubscribed | Published | MessageFrame | Pong | Error


def encode(frame: ServerFrame) -> bytes:
    return _encoder.encode(frame)


def error(exc: FrameError) -> bytes:
    return _encoder.encode(Error(exc.code, exc.detail, exc.ref))


def message(channel: str, message_json: bytes) -> bytes:
    """MessageFrame's JSON, around a message already encoded as JSON."""
    return b'{"type":"message","channel":"%s","message":%s}' % (channel.encode(), message_json)
