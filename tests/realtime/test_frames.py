"""The frame decoder on its own (SPEC §2, §7): hostile frames become error frames, never exceptions."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from keel.realtime import frames
from keel.realtime.schemas import Author, MessageRead

CHANNEL = "00000000-0000-4000-8000-000000000000"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def refusal(data: str) -> frames.FrameError:
    with pytest.raises(frames.FrameError) as error:
        frames.decode(data)
    return error.value


@pytest.mark.parametrize(
    "data",
    [
        "[" * 30_000,
        "{" * 30_000,
        nested(30_000),
        '{"type":"ping","ref":' + nested(30_000) + "}",
        '{"type":"publish","channel":"' + CHANNEL + '","body":' + nested(30_000) + "}",
        '{"x":' + nested(30_000) + ',"type":"ping"}',  # skipped while looking for the tag, still too deep
    ],
)
def test_a_deeply_nested_frame_is_a_bad_frame(data: str) -> None:
    assert len(data) < 64 * 1024  # within the frame size limit: only the nesting is hostile
    assert refusal(data).code == "bad_frame"


def test_nesting_below_the_parsers_limit_is_still_refused() -> None:
    # members are never nested, and unknown ones are refused, so no frame deeper than one level is accepted
    error = refusal(json.dumps({"type": "ping", "ref": "r", "extra": json.loads(nested(100))}))
    assert (error.code, error.ref) == ("invalid", "r")
    assert "extra" in error.detail


def test_a_nul_in_a_publish_body_is_invalid() -> None:
    error = refusal(json.dumps({"type": "publish", "channel": CHANNEL, "body": "a\x00b", "ref": 1}))
    assert (error.code, error.ref) == ("invalid", 1)
    assert "$.body" in error.detail
    assert "\x00" not in error.detail
    publish = frames.decode(json.dumps({"type": "publish", "channel": CHANNEL, "body": "line\nnext\t€"}))
    assert isinstance(publish, frames.Publish)
    assert publish.body == "line\nnext\t€"


@pytest.mark.parametrize(("since", "code"), [(2**63, "invalid"), (10**30, "invalid"), (-1, "invalid")])
def test_since_is_a_seq_within_64_bits(since: int, code: str) -> None:
    assert refusal(json.dumps({"type": "subscribe", "channel": CHANNEL, "since": since})).code == code


def test_the_largest_since_decodes() -> None:
    frame = frames.decode(json.dumps({"type": "subscribe", "channel": CHANNEL, "since": 2**63 - 1}))
    assert isinstance(frame, frames.Subscribe)
    assert frame.since == 2**63 - 1


def test_the_hand_built_message_frame_is_message_frames_encoding() -> None:
    # fan-out splices the already-encoded message into the frame; the AsyncAPI document describes MessageFrame
    message = MessageRead(
        uuid.uuid4(), uuid.UUID(CHANNEL), 7, Author(uuid.uuid4(), "ada"), 'say "hi" \\ €', datetime.now(UTC)
    )
    spliced = frames.message(CHANNEL, msgspec.json.encode(message))
    assert spliced == frames.encode(frames.MessageFrame(uuid.UUID(CHANNEL), message))
