"""keel.http.direct over uvicorn's real httptools protocol and response cycle, with a recording transport.

These fail when uvicorn's private response state moves (the pin in pyproject.toml is the other half): the offer
is made only for `GET /events`, and a direct chunk lands between the response's head and its end as a valid
chunked body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from keel.http.direct import CYCLE_ATTRIBUTES, SCOPE_KEY, DirectBody, chunk
from keel.http.server import KeelHttpToolsProtocol
from tests.http.test_server import RecordingTransport


class BufferingTransport(RecordingTransport):
    """A peer that reads nothing: every byte written stays in the write buffer."""

    def get_write_buffer_size(self) -> int:
        return len(self.written)


class Streamer:
    """An ASGI app that starts a chunked response, writes through DirectBody where it can, and ends via `send`."""

    def __init__(self, *, content_length: bool = False) -> None:
        self.content_length = content_length
        self.direct: DirectBody | None = None
        self.offered = False
        self.written: list[bool] = []
        self.finish = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.offered = SCOPE_KEY in scope
        headers = [(b"content-length", b"0")] if self.content_length else [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self.direct = DirectBody.of(scope)
        if self.direct is not None:
            self.written.append(self.direct.write(chunk(b"data: one\n\n"), limit=1 << 20))
            self.written.append(self.direct.write(chunk(b"data: two\n\n"), limit=1 << 20))
        await self.finish.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve(app: Streamer, request: bytes) -> BufferingTransport:
    config = Config(app=app, http=KeelHttpToolsProtocol, lifespan="off", log_config=None)
    config.load()
    protocol = KeelHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = BufferingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(100):  # the app runs as a task
        if transport.written:
            break
        await asyncio.sleep(0.001)
    return transport


def get(target: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n"


async def test_events_body_is_written_directly_between_the_head_and_the_end() -> None:
    app = Streamer()
    transport = await serve(app, get(b"/events?channel=x"))
    assert app.offered
    assert app.direct is not None
    assert app.written == [True, True]
    app.finish.set()
    await asyncio.sleep(0.01)
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    # what uvicorn's own send would have framed: the two chunks, then its last chunk
    assert body == b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n"
    assert DirectBody.of({SCOPE_KEY: app.direct}) is None  # the response is complete
    assert app.direct.write(chunk(b"late"), limit=1 << 20) is False


@pytest.mark.parametrize(
    ("request_bytes", "content_length"),
    [
        (get(b"/events?channel=x", b"HEAD"), False),  # uvicorn sends no body for a HEAD
        (get(b"/api/v1/public"), False),  # only the event streams
        (get(b"/events"), True),  # a body of known length is not chunked
    ],
)
async def test_no_direct_body_where_the_response_is_not_a_chunked_get_of_events(
    request_bytes: bytes, content_length: bool
) -> None:
    app = Streamer(content_length=content_length)
    await serve(app, request_bytes)
    app.finish.set()
    assert app.direct is None
    assert app.offered is content_length  # the offer is made for GET /events alone; `of` then looks at the response


async def test_a_write_past_the_backlog_limit_is_refused_and_abort_drops_the_connection() -> None:
    app = Streamer()
    transport = await serve(app, get(b"/events"))
    assert app.direct is not None
    await asyncio.sleep(0.01)  # the app's own two writes
    framed = chunk(b"x" * 10)
    assert app.direct.write(framed, limit=transport.get_write_buffer_size() + len(framed)) is True
    before = bytes(transport.written)
    assert app.direct.write(framed, limit=transport.get_write_buffer_size() + len(framed) - 1) is False
    assert bytes(transport.written) == before
    aborted: list[bool] = []
    transport.abort = lambda: aborted.append(True)  # type: ignore[method-assign]
    app.direct.abort()
    assert aborted == [True]
    app.finish.set()


def test_uvicorn_response_cycle_still_has_what_direct_reads() -> None:
    cycle_fields = RequestResponseCycle.__init__.__code__.co_names
    assert all(name in cycle_fields for name in CYCLE_ATTRIBUTES)
