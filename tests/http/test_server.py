"""KeelHttpToolsProtocol driven directly, with a recording transport: the head bookkeeping read by read."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import sys
from typing import Any

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from keel.http import server
from keel.http.server import HEAD_LIMIT, KeelHttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes: list[bytes] = []  # each write, for the count of sends a response takes
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def echo_length(scope: Any, receive: Any, send: Any) -> None:
    """Answer 200 with the length of the request body, after reading all of it."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def connect(
    loop: asyncio.AbstractEventLoop, app: Any = echo_length
) -> tuple[KeelHttpToolsProtocol, RecordingTransport]:
    config = Config(app=app, http=KeelHttpToolsProtocol, lifespan="off", log_config=None, timeout_keep_alive=5)
    protocol = KeelHttpToolsProtocol(config, ServerState(), {}, loop)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def head(*lines: bytes, target: bytes = b"/") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def head_of(size: int) -> bytes:
    """A GET head of exactly `size` bytes on the wire, in header lines of about 1 KiB."""
    lines = [b"x-fill-%d: " % i + b"a" * 1000 for i in range(size // 1100)]
    pad = size - len(head(*lines)) - len(b"x-pad: \r\n")
    return head(*lines, b"x-pad: " + b"a" * pad)


def status_of(transport: RecordingTransport) -> int:
    return int(bytes(transport.written[9:12]))


def problem_of(transport: RecordingTransport) -> dict[str, Any]:
    headers, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers
    assert b"connection: close" in headers
    assert b"x-content-type-options: nosniff" in headers
    assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", headers)
    document: dict[str, Any] = json.loads(body)
    assert document["type"] == f"urn:keel:problem:{document['code']}"
    return document


async def answered(transport: RecordingTransport) -> bytes:
    for _ in range(100):  # the app runs as a task: let it answer
        if transport.written:
            return bytes(transport.written)
        await asyncio.sleep(0.001)
    raise AssertionError("no answer")


async def test_head_past_the_limit_in_one_read_is_refused_with_431() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(head_of(HEAD_LIMIT + 1))
    assert status_of(transport) == 431
    assert problem_of(transport)["code"] == "http.request_header_fields_too_large"
    assert transport.closed
    assert protocol.cycle is None  # the app never saw it


async def test_head_under_the_limit_is_served_whether_it_comes_at_once_or_in_pieces() -> None:
    data = head_of(HEAD_LIMIT)
    for size in (len(data), 4096, 1):
        protocol, transport = connect(asyncio.get_running_loop())
        for start in range(0, len(data), size):
            protocol.data_received(data[start : start + size])
        assert (await answered(transport)).startswith(b"HTTP/1.1 200 ")
        protocol.connection_lost(None)


async def test_a_head_past_the_limit_in_pieces_is_refused_when_it_ends() -> None:
    data = head_of(HEAD_LIMIT + 1)
    for size in (4096, 1):
        protocol, transport = connect(asyncio.get_running_loop())
        for start in range(0, len(data), size):
            protocol.data_received(data[start : start + size])
        assert status_of(transport) == 431
        assert protocol.cycle is None


async def test_a_growing_header_is_refused_once_the_reads_pass_the_limit() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    start = b"GET / HTTP/1.1\r\nx-big: "
    protocol.data_received(start)
    fed = len(start)
    while not transport.closed and fed < 16 * HEAD_LIMIT:
        protocol.data_received(b"a" * 4096)
        fed += 4096
    assert HEAD_LIMIT < fed <= HEAD_LIMIT + 4096
    assert status_of(transport) == 431


async def test_the_limit_counts_each_request_of_a_keep_alive_connection_afresh() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    data = head_of(HEAD_LIMIT // 2)
    for _ in range(4):
        transport.written.clear()
        for start in range(0, len(data), 4096):
            protocol.data_received(data[start : start + 4096])
        assert (await answered(transport)).startswith(b"HTTP/1.1 200 ")
    assert not transport.closed


async def test_a_pipelined_body_is_not_counted_as_the_next_head() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    body = b"b" * (2 * HEAD_LIMIT)
    post = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    following = head_of(HEAD_LIMIT // 2)
    # one read holds all of the first request and the start of the second, whose head is still open after it
    protocol.data_received(post + following[:100])
    protocol.data_received(following[100:])
    for _ in range(100):
        if transport.written.count(b"HTTP/1.1 200 ") == 2:
            break
        await asyncio.sleep(0.001)
    assert transport.written.count(b"HTTP/1.1 200 ") == 2, bytes(transport.written)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x01\x02\x03 / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
)
async def test_malformed_request_gets_400_problem_json(data: bytes) -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(data)
    assert status_of(transport) == 400
    assert problem_of(transport) == {
        "type": "urn:keel:problem:http.bad_request",
        "title": "Bad Request",
        "status": 400,
        "detail": "The request is not valid HTTP/1.1.",
        "code": "http.bad_request",
    }
    assert transport.closed


async def test_a_head_that_takes_too_long_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.05)
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(head()[:10])
    await asyncio.sleep(0.2)
    assert transport.closed
    assert not transport.written  # nothing to say to a client that may not be listening


async def test_a_silent_connection_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.05)
    _, transport = connect(asyncio.get_running_loop())
    await asyncio.sleep(0.2)
    assert transport.closed


async def test_the_head_clock_stops_at_the_end_of_the_head_and_restarts_with_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.1)
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(head())
    await answered(transport)
    await asyncio.sleep(0.2)  # idle between requests belongs to uvicorn's keep-alive timeout (5 s here)
    assert not transport.closed
    protocol.data_received(head()[:10])
    await asyncio.sleep(0.05)
    protocol.data_received(head()[10:])  # 0.05 s into this head: in time
    await asyncio.sleep(0.2)
    assert not transport.closed
    assert transport.written.count(b"HTTP/1.1 200 ") == 2
    protocol.data_received(head()[:10])
    await asyncio.sleep(0.2)
    assert transport.closed


def test_uvicorn_still_has_what_the_protocol_overrides() -> None:
    """KeelHttpToolsProtocol reaches into uvicorn's private API: a new uvicorn must fail here, not in production."""
    assert uvicorn.__version__.startswith("0.54."), "re-read httptools_impl.py, then move the pin in pyproject"
    expected = {
        "__init__": ["self", "config", "server_state", "app_state", "_loop"],
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "data_received": ["self", "data"],
        "on_message_begin": ["self"],
        "on_headers_complete": ["self"],
        "on_message_complete": ["self"],
        "send_400_response": ["self", "msg"],
        "_unset_keepalive_if_required": ["self"],
        "_should_upgrade": ["self"],
        "handle_websocket_upgrade": ["self"],
        "_unsupported_upgrade_warning": ["self"],
    }
    for name, parameters in expected.items():
        assert list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters) == parameters, name
    # data_received is replaced, not extended: it must still be uvicorn's feed-and-dispatch and nothing more
    source = inspect.getsource(HttpToolsProtocol.data_received)
    for step in ("self._unset_keepalive_if_required()", "self.parser.feed_data(data)", "self.send_400_response("):
        assert step in source
    assert source.count("\n") == 15, "uvicorn's data_received changed: port the change to KeelHttpToolsProtocol"


async def test_the_attributes_read_exist_after_a_request() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(head(b"x-one: 1"))
    await answered(transport)
    assert protocol.url == b"/"
    assert (b"x-one", b"1") in protocol.headers
    assert protocol.cycle.response_complete
    assert protocol.server_state.default_headers == []


async def test_a_connection_holds_no_deques_until_it_pipelines() -> None:
    """Memory per idle connection (bench/sse_memory.py): list-backed events, and a pipeline deque only when needed."""
    # what keel.http.server replaces is still uvicorn's (the uvicorn pin is the other half)
    assert "_is_writable_event" in FlowControl.__init__.__code__.co_names
    assert "message_event" in RequestResponseCycle.__init__.__code__.co_names
    protocol, transport = connect(asyncio.get_running_loop())
    assert isinstance(protocol.flow._is_writable_event, server.ListEvent)
    assert protocol.flow._is_writable_event.is_set()  # as uvicorn's FlowControl starts it
    post = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
    protocol.data_received(post)
    assert isinstance(protocol.cycle.message_event, server.ListEvent)
    assert protocol.pipeline is server._NO_PIPELINE
    protocol.data_received(post)  # the first is still answering: uvicorn queues this one
    assert protocol.pipeline is not server._NO_PIPELINE
    for _ in range(100):
        if transport.written.count(b"HTTP/1.1 200 ") == 2:
            break
        await asyncio.sleep(0.001)
    assert transport.written.count(b"HTTP/1.1 200 ") == 2, bytes(transport.written)
    assert not server._NO_PIPELINE


def test_keels_connection_state_leaves_uvicorns_instance_dict_as_small_as_uvicorn_makes_it() -> None:
    """Memory per idle connection: an attribute keel adds outside __slots__ unshares the instance dict (~1.3 KiB)."""
    loop = asyncio.new_event_loop()
    try:
        config = Config(app=echo_length, lifespan="off", log_config=None)
        plain = HttpToolsProtocol(config, ServerState(), {}, loop)
        plain.connection_made(RecordingTransport())
        ours, _ = connect(loop)
        assert set(ours.__dict__) == set(plain.__dict__)
        assert sys.getsizeof(ours.__dict__) == sys.getsizeof(plain.__dict__)
    finally:
        loop.close()


async def finished(protocol: KeelHttpToolsProtocol) -> None:
    for _ in range(200):  # the app runs as a task
        if protocol.cycle is not None and protocol.cycle.response_complete:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the response did not complete")


async def test_a_response_goes_out_in_one_write_head_and_body_together() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
    await finished(protocol)
    [write] = transport.writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n")
    assert write.endswith(b"\r\n\r\n3")


async def test_a_streamed_response_sends_its_head_with_the_first_chunk_then_each_chunk_as_it_comes() -> None:
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"two", "more_body": False})

    protocol, transport = connect(asyncio.get_running_loop(), streaming)
    protocol.data_received(head())
    await finished(protocol)
    first, second = transport.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked\r\n" in first
    assert first.endswith(b"\r\n\r\n3\r\none\r\n")
    assert second == b"3\r\ntwo\r\n0\r\n\r\n"


async def test_a_head_request_and_an_interim_100_continue_are_written_at_once() -> None:
    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n")  # no body follows a HEAD's head: not held
    await finished(protocol)
    [write] = transport.writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n")
    assert write.endswith(b"\r\n\r\n")

    protocol, transport = connect(asyncio.get_running_loop())
    protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
    for _ in range(100):  # the app asks for the body: the client is told to send it, now
        if transport.writes:
            break
        await asyncio.sleep(0.001)
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(b"abc")
    await finished(protocol)
    assert len(transport.writes) == 2
    assert transport.writes[1].endswith(b"\r\n\r\n3")


async def test_an_app_that_fails_after_its_head_still_gets_the_head_out_before_the_close() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("mid-response")

    protocol, transport = connect(asyncio.get_running_loop(), failing)
    protocol.data_received(head())
    for _ in range(100):
        if transport.closed:
            break
        await asyncio.sleep(0.001)
    assert transport.closed
    [write] = transport.writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n")
    assert write.endswith(b"content-length: 10\r\n\r\n")


def test_uvicorn_still_writes_a_response_as_the_joined_writes_expect() -> None:
    """_JoinedWrites relies on uvicorn's response cycle writing through `self.transport`: the head in one write, each
    body message in one write (none for a HEAD), 100 Continue before the head, and a close after a failure."""
    used = set(re.findall(r"self\.transport\.(\w+)", inspect.getsource(RequestResponseCycle)))
    assert used == {"write", "close", "is_closing"}  # all that _JoinedWrites answers
    send = inspect.getsource(RequestResponseCycle.send)
    assert send.count("self.transport.write(") == 3  # the head, a chunked body's chunk, a sized body
    assert 'if self.scope["method"] == "HEAD":' in send
    assert 'self.transport.write(b"HTTP/1.1 100 Continue' in inspect.getsource(RequestResponseCycle.receive)
    assert "self.transport.close()" in inspect.getsource(RequestResponseCycle.run_asgi)
