"""uvicorn's protocols as `keel serve` runs them: httptools with the request-head limits of SPEC §2 and problem+json
for its own refusals, and wsproto with less memory per idle WebSocket.

uvicorn bounds neither the size nor the time of a request head, and httptools grows a header that arrives over
many reads by concatenation, so one 128 MiB header costs seconds of event loop and stalls every other client.
This subclass counts head bytes as reads arrive (before the parser concatenates them) and refuses past
`HEAD_LIMIT` with 431; a head not complete within `HEAD_TIMEOUT` of its first byte (or of the connection, for
the first request) has its connection closed. WebSocket upgrades start here too, so they are covered. A response
goes out in one write, its head joined to its body (`_JoinedWrites`).

Everything overridden here is uvicorn's private API: pyproject pins uvicorn to one minor version and
tests/http/test_server.py fails when the methods relied on change.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from collections import deque
from typing import Any, Final

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from uvicorn.server import ServerState

from keel.http.direct import DirectBody
from keel.http.errors import PROBLEM_JSON, problem_body
from keel.http.middleware import REQUEST_ID_HEADER, SECURITY_HEADERS, request_id_of

HEAD_LIMIT: Final = 64 * 1024  # bytes of request line and headers (SPEC §2)
HEAD_TIMEOUT: Final = 20.0  # seconds from a head's first byte to its end (SPEC §2)
# GETs whose app may write its body straight to the connection (keel.http.direct): the event streams' fan-out
DIRECT_PATHS: Final = frozenset({"/events"})

_BAD_REQUEST: Final = problem_body(400, code="http.bad_request", detail="The request is not valid HTTP/1.1.")
_HEAD_TOO_LARGE: Final = problem_body(
    431,
    code="http.request_header_fields_too_large",
    detail=f"The request line and headers exceed {HEAD_LIMIT} bytes.",
)


class ListEvent(asyncio.Event):
    """An asyncio.Event whose waiters are a list: asyncio's deque allocates a 64-slot block (624 bytes) up front, and
    uvicorn keeps two such events per connection (its flow control's and its request cycle's) that at most one task
    ever waits on: -1.1 KiB per idle event stream (bench/sse_memory.py, 2026-12-04). `Event` only appends to,
    removes from and iterates its waiters, which a list does as well."""

    def __init__(self, *, is_set: bool = False) -> None:
        super().__init__()
        self._waiters: list[asyncio.Future[Any]] = []  # type: ignore[assignment]
        self._value = is_set


# the pipeline of every connection until one pipelines (on_headers_complete swaps in its own): never appended to
_NO_PIPELINE: Final[deque[Any]] = deque()


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop httptools at once; feed_data reports it as a callback error."""


class _JoinedWrites:
    """The transport of one response's cycle: the head is held until the first body write and goes out with it, one
    send() a response instead of two (`/api/v1/public` served: ~2 % less server CPU a request, BENCHMARKS.md
    2026-12-06 04:45). A streamed body's later chunks go out as they come; a response whose app sends its head and
    then waits has its head sent with the first chunk, or when uvicorn closes the connection.

    uvicorn's RequestResponseCycle writes through `self.transport`: tests/http/test_server.py holds it to that."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = b""  # b"": nothing written yet; None: the head went out

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._transport.write(data)
        elif self._held:  # the first body write: the head goes with it
            data, self._held = self._held + data, None
            self._transport.write(data)
        elif data.startswith(b"HTTP/1.1 100 "):  # an interim 100 Continue is what lets the client send its body
            self._transport.write(data)
        else:  # the head
            self._held = data

    def close(self) -> None:
        if self._held:
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class KeelHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a bounded request head; `keel serve` passes it to uvicorn as `http`."""

    # keel's own per-connection state lives in slots, not in the instance's __dict__: uvicorn's 27 attributes fit
    # a key-sharing dict (288 B), and eight more unshared it (1 584 B); an idle event stream is 1.2 KiB lighter
    # with them in slots (bench/sockets.py; issue 16: 50 000 event streams at <= 12 KiB each)
    __slots__ = (
        "_begun",
        "_head_lower",
        "_head_open",
        "_head_timer",
        "_head_upper",
        "_is_head_too_large",
        "_is_idle",
        "_read_size",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # A head is "open" from the parser's on_message_begin to on_headers_complete. While it spans reads,
        # `_head_upper` sums every read that touched it and `_head_lower` only those that held nothing else
        # (the first read of a pipelined request may also hold the end of the one before it).
        self._head_open = False
        self._head_upper = 0
        self._head_lower = 0
        self._is_idle = True  # between requests, as the parser sees the stream
        self._begun = 0  # requests begun on this connection
        self._read_size = 0
        self._is_head_too_large = False
        self._head_timer: TimerHandle | None = None
        # memory per idle connection (issue 16: 50 000 event streams at <= 12 KiB each; bench/sse_memory.py): uvicorn
        # gives each connection a deque for pipelined requests, which almost none has: 0.74 KiB with its block
        self.pipeline = _NO_PIPELINE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = ListEvent(is_set=True)  # as FlowControl made it, without the deque
        # the first request's head is due within HEAD_TIMEOUT of the connection: a socket that never sends
        # a byte would otherwise be held forever (uvicorn's keep-alive timer only starts after a response)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, plus the head bookkeeping; the cost for a head that arrives in one read
        # (nearly all of them) is a few attribute reads and stores, and no allocation
        self._unset_keepalive_if_required()
        starts_clean = self._head_open or self._is_idle
        begun = self._begun
        self._read_size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._is_head_too_large:
                self._refuse(431, _HEAD_TOO_LARGE)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, _BAD_REQUEST)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_open:  # a head spans reads: bound its size and arm its clock
            self._head_upper += len(data)
            if starts_clean and self._begun - begun <= 1:
                self._head_lower += len(data)
            if self._head_lower > HEAD_LIMIT:
                self._refuse(431, _HEAD_TOO_LARGE)
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def on_message_begin(self) -> None:
        self._head_open = True
        self._is_idle = False
        self._begun += 1
        self._head_upper = self._head_lower = 0
        HttpToolsProtocol.on_message_begin(self)  # not super(): that allocates, once per callback

    def on_headers_complete(self) -> None:
        self._head_open = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        # the reads so far bound the head from above; only a head near the limit is measured exactly
        if self._head_upper + self._read_size > HEAD_LIMIT and self._head_size() > HEAD_LIMIT:
            self._is_head_too_large = True
            raise _HeadTooLarge
        if self.cycle is not None and not self.cycle.response_complete and self.pipeline is _NO_PIPELINE:
            self.pipeline = deque()  # uvicorn is about to queue this request behind the one still answering
        HttpToolsProtocol.on_headers_complete(self)
        scope, cycle = self.scope, self.cycle
        # an upgrade's scope has no path yet, and no cycle; otherwise the cycle was made for this scope just now and
        # its task has not run yet, so nothing waits on its event and the app sees the scope's key
        if getattr(cycle, "scope", None) is scope:
            cycle.message_event = ListEvent()
            if scope["path"] in DIRECT_PATHS and scope["method"] == "GET":
                DirectBody.attach(scope, cycle)
            elif scope["method"] != "HEAD":  # a HEAD's head is its last write: nothing to join it to
                # duck-typed: the cycle only writes, closes and asks is_closing (tests/http/test_server.py)
                cycle.transport = _JoinedWrites(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._is_idle = True
        HttpToolsProtocol.on_message_complete(self)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, _BAD_REQUEST)

    def _head_size(self) -> int:
        # the head as parsed, a lower bound of its bytes: "GET <target> HTTP/1.1\r\n" with the shortest method,
        # "name: value\r\n" per header, and the blank line
        return len(self.url) + 17 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, body: bytes) -> None:
        """Answer `body` as problem+json and close, reading no more of the request (uvicorn answers plain text)."""
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request went wrong while the one before it is still answering: no room for a reply
            self.transport.close()
            return
        # the edge middleware never sees this request: its headers are added here (a fresh id: none was read)
        request_id = (REQUEST_ID_HEADER, request_id_of(None).encode())
        headers = [*self.server_state.default_headers, request_id, *SECURITY_HEADERS]
        content = [STATUS_LINE[status]]
        for name, value in headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


class KeelWSProtocol(WSProtocol):
    """uvicorn's wsproto WebSocket protocol; `keel serve` passes it to uvicorn as `ws`.

    Its attributes that never change after __init__ live in slots: uvicorn sets 32 on every connection, past the 30 a
    key-sharing instance dict holds, so each WebSocket had a dict of its own (1 584 B). With these six in slots the
    other 26 share their keys: ~1.2 KiB less for every idle WebSocket (issue 16: 50 000 sockets at <= 16 KiB each).
    """

    __slots__ = ("app", "asgi_version", "config", "logger", "loop", "root_path")
