"""/events against a real `keel serve` with a streaming HTTP client (SPEC §8), on both backends."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from keel.realtime.events import BadStreamRequest, parse_request
from tests.conftest import Backend
from tests.realtime.conftest import EventReader, Live, backend_env, start_live
from tests.servers import keel_serve

# keel's app under uvicorn's h11 protocol: no DirectBody is offered, so events go through ASGI `send`
H11_SERVER = [sys.executable, "-m", "uvicorn", "keel.asgi:app", "--factory", "--http", "h11", "--port", "{port}"]


@contextmanager
def events(
    live: Live, *channels: str, headers: dict[str, str] | None = None, timeout: float = 10, **params: str
) -> Iterator[EventReader]:
    query: list[tuple[str, str | int | float | bool | None]] = [("channel", c) for c in channels]
    query += params.items()
    with httpx.stream(
        "GET", f"{live.url}/events", params=query, headers={**live.auth, **(headers or {})}, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        reader = EventReader(response)
        assert reader.next().retry == 3000  # `retry:` once, first
        yield reader


def test_delivery_and_exact_resume_on_one_channel(live: Live) -> None:
    live.post("before")  # seq 1: not delivered, the stream starts live
    with events(live, live.channel, headers={"Accept-Encoding": "gzip"}) as stream:
        posted = [live.post(f"m{i}") for i in range(3)]
        got = [stream.next() for _ in range(3)]
    assert [e.event for e in got] == ["message"] * 3
    assert [e.message for e in got] == posted
    assert [e.id for e in got] == [f"{live.channel}:{seq}" for seq in (2, 3, 4)]

    live.post("missed 5")
    live.post("missed 6")
    with events(live, live.channel, headers={"Last-Event-ID": got[0].id or ""}) as stream:
        resumed = [stream.next() for _ in range(4)]
        live.post("live 7")
        resumed.append(stream.next())
    assert [e.message["seq"] for e in resumed] == [3, 4, 5, 6, 7]
    assert resumed[-1].id == f"{live.channel}:7"


def test_resume_of_a_two_channel_stream_by_query(live: Live) -> None:
    other = live.new_channel("other")
    with events(live, live.channel, other) as stream:
        live.post("a1")
        first = stream.next()
        live.post("b1", channel=other)
        second = stream.next()
    assert first.id == f"{live.channel}:1,{other}:0"  # a pair for every channel, delivered or not
    assert second.id == f"{live.channel}:1,{other}:1"

    live.post("a2")
    live.post("b2", channel=other)
    live.post("a3")
    assert first.id is not None
    with events(live, live.channel, other, last_event_id=first.id) as stream:
        resumed = [stream.next() for _ in range(4)]
    by_channel: dict[str, list[int]] = {}
    for event in resumed:
        by_channel.setdefault(event.message["channel_id"], []).append(event.message["seq"])
    assert by_channel == {live.channel: [2, 3], other: [1, 2]}
    assert resumed[-1].id in (f"{live.channel}:3,{other}:2",)


def test_refusals_come_before_the_stream(live: Live) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    cases: list[tuple[list[tuple[str, str | int | float | bool | None]], dict[str, str], int]] = [
        ([("channel", live.channel)], {}, 401),
        ([("channel", unknown)], live.auth, 404),
        ([("channel", live.channel), ("channel", unknown)], live.auth, 404),
        ([("channel", "nope")], live.auth, 422),
        ([], live.auth, 422),
        ([("channel", live.channel), ("last_event_id", "garbage")], live.auth, 422),
    ]
    for params, headers, status in cases:
        response = httpx.get(f"{live.url}/events", params=params, headers=headers)
        assert response.status_code == status, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    ticket = live.ticket()
    with httpx.stream("GET", f"{live.url}/events", params={"channel": live.channel, "ticket": ticket}) as response:
        assert response.status_code == 200
    assert httpx.get(f"{live.url}/events", params={"channel": live.channel, "ticket": ticket}).status_code == 401


def test_a_keep_alive_comment_every_15_seconds(live: Live) -> None:
    with events(live, live.channel, timeout=30) as stream:
        live.post("first")
        stream.next()
        started = time.monotonic()
        next(line for line in stream.lines if line.startswith(":"))  # blocks until the comment arrives
        assert 14 < time.monotonic() - started < 20


def test_logout_ends_the_sessions_streams(live: Live) -> None:
    with events(live, live.channel) as stream:
        started = time.monotonic()
        live.log_out()
        with pytest.raises(EOFError):
            stream.next()
        assert time.monotonic() - started < 5


BAD_SEQS = ["-1e30", "-1", "99999999999999999999999", "9223372036854775808", "+5", " 5", "1_000", "", "0x10", "٣"]


def test_a_bad_last_event_id_is_refused_with_422_before_the_stream(live: Live) -> None:
    live.post("one")
    for seq in BAD_SEQS:
        last_event_id = f"{live.channel}:{seq}"
        by_header = httpx.get(
            f"{live.url}/events",
            params={"channel": live.channel},
            headers=[
                (b"authorization", live.auth["Authorization"].encode()),
                (b"last-event-id", last_event_id.encode()),
            ],
        )
        by_query = httpx.get(
            f"{live.url}/events", params={"channel": live.channel, "last_event_id": last_event_id}, headers=live.auth
        )
        for response in (by_header, by_query):
            assert response.status_code == 422, (seq, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "realtime.bad_stream_request"
    with events(live, live.channel, headers={"Last-Event-ID": f"{live.channel}:0"}) as stream:
        assert stream.next().message["body"] == "one"  # a good one still resumes


@pytest.mark.parametrize("seq", BAD_SEQS)
def test_a_last_event_id_seq_is_a_whole_number_within_64_bits(seq: str) -> None:
    channel = "00000000-0000-4000-8000-000000000000"
    for scope in (
        {"query_string": f"channel={channel}".encode(), "headers": [(b"last-event-id", f"{channel}:{seq}".encode())]},
        {"query_string": urlencode({"channel": channel, "last_event_id": f"{channel}:{seq}"}).encode(), "headers": []},
    ):
        with pytest.raises(BadStreamRequest):
            parse_request(scope)


def test_the_largest_last_event_id_seq_parses() -> None:
    channel = "00000000-0000-4000-8000-000000000000"
    scope = {
        "query_string": f"channel={channel}".encode(),
        "headers": [(b"last-event-id", f"{channel}:{2**63 - 1}".encode())],
    }
    assert parse_request(scope)[1] == {uuid.UUID(channel): 2**63 - 1}


def test_the_opening_carries_the_position_so_a_stream_dropped_before_any_message_resumes(live: Live) -> None:
    live.post("before")  # seq 1
    query = {"channel": live.channel}
    with httpx.stream("GET", f"{live.url}/events", params=query, headers=live.auth, timeout=10) as response:
        opening = EventReader(response).next()
    assert opening.retry == 3000
    assert opening.data is None  # no event fires in a browser, but EventSource keeps the id
    assert opening.id == f"{live.channel}:1"
    missed = [live.post(f"missed {i}") for i in range(2)]
    with events(live, live.channel, headers={"Last-Event-ID": opening.id}) as stream:
        assert [stream.next().message for _ in range(2)] == missed


@pytest.mark.parametrize("server", ["keel serve", "uvicorn h11"])
def test_events_go_straight_to_the_connection_under_keel_serve_and_through_send_elsewhere(
    backend: Backend, tmp_path: Path, server: str
) -> None:
    command = None if server == "keel serve" else H11_SERVER
    with keel_serve(backend_env(backend, KEEL_LOG_LEVEL="debug"), tmp_path, command=command) as running:
        live = start_live(running)
        other = live.new_channel("other")
        # one channel: the chunk shared by every such stream; two: the stream's own id with both positions
        with events(live, live.channel) as one, events(live, live.channel, other) as two:
            posted = [live.post(f"m{i}") for i in range(3)]
            for message in posted:
                event = one.next()
                assert (event.id, event.message) == (f"{live.channel}:{message['seq']}", message)
                event = two.next()
                assert (event.id, event.message) == (f"{live.channel}:{message['seq']},{other}:0", message)
        expected = "direct writes" if command is None else "ASGI sends"
        assert running.output().count(f"event stream opened: {expected}") == 2
