"""A started streaming response's body written straight to the connection: for fan-out to thousands of streams.

Every body chunk an ASGI app sends passes through each middleware's `send` and then uvicorn's, which frames it
(chunked encoding) and writes it: at 5 000 event streams that is most of a fan-out's CPU time (BENCHMARKS.md). Under
`keel serve` the HTTP protocol (keel.http.server) puts a `DirectBody` on the scope of `GET /events`; once the
response has started through `send` (so the edge's headers, status and access log are as always), the app may write
body chunks with `DirectBody.write` instead: bytes already framed by `chunk`, which one fan-out can build once and
write to every stream. The end of the response still goes through `send`. What is not yet sent on the connection is
bounded: past `limit` bytes a write is refused and the caller ends the stream (SPEC §8: too slow) rather than
buffering without bound.

This relies on uvicorn's private RequestResponseCycle (its transport and response state): pyproject pins uvicorn to
one minor version and tests/http/test_direct.py fails when what is read here moves. Anything else (another server,
a HEAD, a response that is not chunked, or no `DirectBody` at all) gets None from `DirectBody.of`, and the app sends
through `send` as before.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

SCOPE_KEY: Final = "keel.direct_body"
# the cycle's attributes read here; tests/http/test_direct.py holds uvicorn to them
CYCLE_ATTRIBUTES: Final = (
    "transport",
    "scope",
    "response_started",
    "response_complete",
    "chunked_encoding",
    "message_event",
)


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (RFC 9112 §7.1), ready for `DirectBody.write`."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class DirectBody:
    """The connection under one response of uvicorn's httptools protocol."""

    __slots__ = ("_cycle", "_transport")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._transport: asyncio.Transport = cycle.transport

    @classmethod
    def attach(cls, scope: dict[str, Any], cycle: Any) -> None:
        """Offer direct writes to the app of `scope` when `cycle` is one uvicorn still shapes as expected."""
        if all(hasattr(cycle, name) for name in CYCLE_ATTRIBUTES):
            scope[SCOPE_KEY] = cls(cycle)

    @staticmethod
    def of(scope: Any) -> DirectBody | None:
        """The started response's direct writer, or None where the body must go through `send`."""
        direct = scope.get(SCOPE_KEY)
        if not isinstance(direct, DirectBody):
            return None
        cycle = direct._cycle
        if (
            not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not True
            or cycle.scope["method"] != "GET"  # the server's own scope: a HEAD the edge runs as a GET sends no body
        ):
            return None
        return direct

    def write(self, framed: bytes, limit: int) -> bool:
        """Write one or more `chunk`s; False, writing nothing, once the connection is gone or `limit` bytes wait."""
        transport = self._transport
        if transport.is_closing() or self._cycle.response_complete:
            return False
        if transport.get_write_buffer_size() + len(framed) > limit:
            return False
        transport.write(framed)
        return True

    def wake(self) -> None:
        """Return the app's pending `receive` (uvicorn's waits on the cycle's message event): a stream that closes
        wakes its one task this way. That `receive` answers an empty `http.request` (or `http.disconnect`)."""
        self._cycle.message_event.set()

    def abort(self) -> None:
        """Drop the connection and what waits in its buffer: a stream too far behind resumes from its last event."""
        self._transport.abort()
