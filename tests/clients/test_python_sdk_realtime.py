"""The hand-written realtime half of the Python SDK, piece by piece: the event-stream parser, frame decoding, when
to retry and how long to wait. tests/clients/test_python_sdk.py runs it whole against `keel serve`."""

from __future__ import annotations

import json
import uuid

import pytest

from keel_client_realtime import frames
from keel_client_realtime.retry import Backoff, problem, retry_after
from keel_client_realtime.sse import Event, EventParser, positions
from keel_client_realtime.websocket import is_fatal

CHANNEL = uuid.UUID("0b7c1a52-5f57-4f3b-9d39-0a3c3b7f4d11")
MESSAGE = {
    "id": "6f1c2b1e-3f7a-4d7e-8f3c-2c7f0a9e1b55",
    "channel_id": str(CHANNEL),
    "seq": 7,
    "author": {"id": "4a9f6a7e-0d2b-4a51-9a8e-0f3f7c2d9b10", "username": "ada"},
    "body": "hello",
    "created_at": "2026-01-02T03:04:05.678901+00:00",
}


def feed(parser: EventParser, text: str) -> list[Event]:
    return [event for line in text.split("\n") if (event := parser.feed(line)) is not None]


def test_parser_keeps_the_opening_position_of_a_stream_without_dispatching_it() -> None:
    parser = EventParser()
    assert feed(parser, f"retry: 3000\nid: {CHANNEL}:4\n\n") == []
    assert parser.last_event_id == f"{CHANNEL}:4"
    assert parser.retry_ms == 3000


def test_parser_dispatches_a_message_with_its_id() -> None:
    parser = EventParser()
    events = feed(parser, f": keep-alive\n\nevent: message\nid: {CHANNEL}:7\ndata: {json.dumps(MESSAGE)}\n\n")
    assert events == [Event("message", json.dumps(MESSAGE))]
    assert parser.last_event_id == f"{CHANNEL}:7"


def test_parser_follows_the_standard_on_fields() -> None:
    parser = EventParser("kept")
    # data lines join with newlines and a bare `data` adds an empty one; the space after the colon is optional;
    # an id with NUL, a retry that is not digits and unknown fields are ignored; an untyped event is a message
    events = feed(parser, "data:one\ndata: two\nid: bad\0id\nretry: 1e3\nfoo: bar\ndata\n\n")
    assert events == [Event("message", "one\ntwo\n")]
    assert parser.last_event_id == "kept"
    assert parser.retry_ms is None


def test_parser_drops_an_event_cut_off_by_the_connection() -> None:
    parser = EventParser()
    feed(parser, "event: message\nid: 9\ndata: partial")
    parser.interrupted()
    assert feed(parser, "data: next\n\n") == [Event("message", "next")]
    assert parser.last_event_id is None


def test_positions_reads_every_channel_of_an_event_id() -> None:
    other = uuid.uuid4()
    assert positions(f"{CHANNEL}:7,{other}:0") == {CHANNEL: 7, other: 0}
    assert positions(None) == {}
    assert positions(f"{CHANNEL}:x") == {}


def test_decode_types_the_frames_a_subscriber_uses() -> None:
    event = frames.decode(json.dumps({"type": "message", "channel": str(CHANNEL), "message": MESSAGE}))
    assert isinstance(event, frames.MessageEvent)
    assert (event.channel, event.message.seq, event.message.author.username) == (CHANNEL, 7, "ada")
    assert event.message.created_at.microsecond == 678901
    subscribed = frames.decode(json.dumps({"type": "subscribed", "channel": str(CHANNEL), "last_seq": 3}))
    assert subscribed == frames.Subscribed(CHANNEL, 3)
    error = frames.decode('{"type": "error", "code": "not_found", "detail": "no such channel", "ref": "r"}')
    assert error == frames.ErrorFrame("not_found", "no such channel", "r")
    assert frames.decode('{"type": "pong"}') is None
    assert frames.decode('{"type": "from-a-newer-server"}') is None


def test_subscribe_frame_resumes_only_when_given_a_seq() -> None:
    assert json.loads(frames.subscribe(CHANNEL, 5)) == {
        "type": "subscribe",
        "channel": str(CHANNEL),
        "ref": str(CHANNEL),
        "since": 5,
    }
    assert "since" not in json.loads(frames.subscribe(CHANNEL, None))


@pytest.mark.parametrize(("code", "fatal"), [(4401, True), (4403, True), (1008, True), (1009, True), (4500, False)])
def test_close_codes_that_say_not_to_come_back(code: int, fatal: bool) -> None:
    assert is_fatal(code) is fatal


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 1012, 1013])
def test_close_codes_after_which_the_client_reconnects(code: int) -> None:
    assert not is_fatal(code)


def test_backoff_doubles_up_to_its_maximum_with_jitter_and_starts_over_after_reset() -> None:
    backoff = Backoff(initial=1.0, maximum=4.0)
    delays = [backoff.next_delay() for _ in range(5)]
    for delay, step in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert step / 2 <= delay <= step
    assert backoff.next_delay(at_least=10) == 10
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_retry_after_and_problem_read_a_refusal() -> None:
    assert retry_after({"retry-after": "3"}) == 3
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after({}) == 0
    assert problem(b'{"status": 401, "code": "accounts.authentication_required"}')["status"] == 401
    assert problem(b"<html>") == {}
    assert problem(b"[]") == {}
