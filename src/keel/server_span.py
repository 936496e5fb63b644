"""The server span of an HTTP request or a realtime handshake, which the edge drives through the request's life.

A sampled request's span is a `RequestSpan`, a keel.tracing.LeanSpan that also takes the request's status, its
response head and its end; an unsampled one is an `UnsampledRequest`, whose methods do nothing and whose ids are drawn
only if asked for. Either is the request's span for keel's tracers through keel.tracing.REQUEST_SPAN, not through
the API's context: a context variable set and reset, where the API's attach and detach took eleven calls.

Measured with bench/edge_parts.py (instructions from start to detach, the edge's headers given), against a wrapper
object around a LeanSpan attached to the API's context: a sampled request's span 47 500 -> 35 900, an unsampled
one's 11 800 -> 10 300 (BENCHMARKS.md 2026-12-05 11:45).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextvars import Token
from random import getrandbits
from random import random as _draw
from typing import Any, Final

from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from keel.tracing import NOT_SAMPLED, REQUEST_SPAN, SAMPLED, LeanSpan, LeanTracer, UnsampledSpan, span_context

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_propagator: Final = TraceContextTextMapPropagator()
# W3C Trace Context's `traceparent` and its limits, as the API's propagator reads them (a later version may append
# fields); tests/test_trace_context.py holds the two readings to the same answers
_TRACEPARENT: Final = re.compile(rb"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAX: Final = 512
_TRACESTATE_MAX: Final = 8192


class RequestSpan(LeanSpan):
    """A sampled request's server span, named `{METHOD} {route template}` when it ends (`{METHOD}` alone when no
    route matched: raw paths hold ids and would make span names unbounded). What it learns of the response (status,
    route, error) is recorded in one step at the end."""

    __slots__ = ("_done", "_status", "_token", "method", "scope")

    def start(self, method: str, scope: Any) -> RequestSpan:
        """Make this the task's request span; `scope` is where the router writes the matched route's template."""
        self.method, self.scope = method, scope
        self._status: int | None = None
        self._done = False
        self._token = REQUEST_SPAN.set(self)
        return self

    def follow(self, scope: Any) -> None:
        """Read the route template from `scope` instead (HEAD runs the app on a copy of the request's)."""
        self.scope = scope

    def response_started(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """The response head is going out: an event stream's span ends here (its handshake, not its lifetime)."""
        if self._done:
            return
        self._status = status
        for name, value in headers:  # a loop, not any(<generator>): a quarter of the cost
            if name == b"content-type":
                if value.startswith(b"text/event-stream"):
                    self.finish()
                return

    def finish(self, error: BaseException | None = None) -> None:
        """End the span (once), with what the request learnt: a 5xx status marks it as an error (4xx is the client's,
        per the conventions)."""
        if self._done:
            return
        self._done = True
        attributes = self.attributes
        if self._status is not None:
            attributes["http.response.status_code"] = self._status
        route = self.scope.get("path_template")
        self.scope = None  # the span waits in the export queue: it keeps no request alive
        if route:
            attributes["http.route"] = route
            self.name = f"{self.method} {route}"
        if error is not None:
            self.record_exception(error)
            self.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif self._status is not None and self._status >= 500:
            self.set_status(Status(StatusCode.ERROR))
        self.end()

    def close(self, status: int | None = None, error: BaseException | None = None) -> None:
        """A handshake's end: record `status`, end the span and leave it."""
        if status is not None:
            self._status = status
        self.finish(error)
        self.detach()

    def detach(self) -> None:
        """Stop being the task's request span; call from the task that started it, after finish()."""
        REQUEST_SPAN.reset(self._token)

    def ids(self) -> tuple[str, str]:
        """(trace_id, span_id) in hex, for the request's log line."""
        context = self._context
        # the ids' bytes in hex: half the CPU of f"{:032x}" and f"{:016x}" (0.96 -> 0.44 µs, load 7-8)
        return context[0].to_bytes(16, "big").hex(), context[1].to_bytes(8, "big").hex()


class UnsampledRequest(UnsampledSpan):
    """An unsampled request's span: it records nothing, and children started under it are itself (keel.tracing),
    so SQL, Redis and keel's own spans cost a context variable's lookup. Its ids are drawn only if something sends
    its trace on (a realtime publish does); the access line gets none (its trace leads nowhere: nothing of it is
    exported)."""

    __slots__ = ("_token",)

    def __init__(
        self, trace_id: int = 0, flags: TraceFlags = NOT_SAMPLED, trace_state: TraceState | None = None
    ) -> None:
        """A new trace's span (no `trace_id`: one is drawn when asked for), or one continuing a trace; made the
        task's request span at once (UnsampledSpan's fields set here: one call less, 9 in 10 requests under the
        default sampler)."""
        self._context = None  # drawn on first use
        self._trace_id, self._flags, self._trace_state = trace_id, flags, trace_state
        self._token: Token[Any] = REQUEST_SPAN.set(self)

    def follow(self, scope: Any) -> None:
        pass

    def response_started(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        pass

    def finish(self, error: BaseException | None = None) -> None:
        pass

    def close(self, status: int | None = None, error: BaseException | None = None) -> None:
        REQUEST_SPAN.reset(self._token)

    def detach(self) -> None:
        REQUEST_SPAN.reset(self._token)

    def ids(self) -> None:
        return None


ServerSpan = RequestSpan | UnsampledRequest


def start(tracer: LeanTracer, scope: Any, headers: Mapping[bytes, bytes] | None) -> ServerSpan:
    """The server span of the request (or WebSocket handshake) in `scope`, continuing the client's `traceparent`,
    made the task's request span.

    `headers` holds the request's `traceparent` and `tracestate` by name when the caller has read them already (the
    edge's one pass over the headers, keel.http.middleware.edge_headers); None, and they are read from the scope.
    The query string is never recorded: /ws?ticket= and /events?ticket= carry credentials. The attributes are built
    only for a span that records them.
    """
    if headers is not None:
        traceparent, tracestate = headers.get(b"traceparent"), headers.get(b"tracestate")
    else:
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"traceparent" and traceparent is None:
                traceparent = value
            elif name == b"tracestate":  # several are one list (W3C Trace Context)
                tracestate = value if tracestate is None else tracestate + b"," + value
    provider = tracer.provider
    if not provider.serves_server_spans:  # another named sampler may look at the attributes: the API's way
        return _sampled_by_the_api(tracer, scope, _method_of(scope), traceparent, tracestate)
    parent = _remote_parent(traceparent, tracestate) if traceparent is not None else None
    ratio = provider.root_ratio
    if ratio is None:  # always_on or always_off decide alone, whatever the client's flag
        sampled = provider.sampler is ALWAYS_ON
    elif parent is None:  # keel's default: draw its share of new traces, or follow the client
        sampled = _draw() < ratio
    else:
        sampled = parent.trace_flags.sampled
    if not sampled:
        if parent is None:
            return UnsampledRequest()
        flags = parent.trace_flags
        return UnsampledRequest(parent.trace_id, TraceFlags(flags & ~1), parent.trace_state)
    method = _method_of(scope)  # a sampled span's name and attribute: not computed for the nine in ten others
    if parent is None:
        context = span_context(getrandbits(128) or 1, getrandbits(64) or 1, SAMPLED, None)
    else:
        context = span_context(parent.trace_id, getrandbits(64) or 1, SAMPLED, parent.trace_state)
    attributes = _server_attributes(scope, method)
    span = RequestSpan(provider, tracer.scope, method, context, parent, SpanKind.SERVER, attributes, (), None)
    return span.start(method, scope)


def _method_of(scope: Any) -> str:
    method: str = scope.get("method", "GET")  # a WebSocket handshake is a GET
    return method if method in _METHODS else "_OTHER"


def _sampled_by_the_api(
    tracer: LeanTracer, scope: Any, method: str, traceparent: bytes | None, tracestate: bytes | None
) -> ServerSpan:
    """A named sampler other than always_on and always_off decides as the SDK asks it: with the propagator's
    parsing and the attributes; its decision becomes the request's span."""
    carrier = {"traceparent": traceparent.decode("latin-1")} if traceparent is not None else {}
    if carrier and tracestate is not None:
        carrier["tracestate"] = tracestate.decode("latin-1")
    context = _propagator.extract(carrier) if carrier else None
    decided: Span = tracer.start_span(method, context, SpanKind.SERVER, _server_attributes(scope, method))
    if type(decided) is not LeanSpan:  # an UnsampledSpan
        decided_context = decided.get_span_context()
        trace_id, flags, state = decided_context.trace_id, decided_context.trace_flags, decided_context.trace_state
        return UnsampledRequest(trace_id, flags, state)
    span = RequestSpan(
        tracer.provider,
        tracer.scope,
        method,
        decided.get_span_context(),
        decided.parent,
        SpanKind.SERVER,
        decided.attributes,
        decided.links,
        decided.start_time,
    )
    return span.start(method, scope)


def _remote_parent(traceparent: bytes, tracestate: bytes | None) -> SpanContext | None:
    """The client's span from its W3C `traceparent` (and `tracestate`), as the SDK's propagator reads them, or None
    when the header is malformed (the request then starts a trace of its own)."""
    match = _TRACEPARENT.search(traceparent) if len(traceparent) <= _TRACEPARENT_MAX else None
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    state = None
    if tracestate is not None and len(tracestate) <= _TRACESTATE_MAX:
        state = TraceState.from_header([tracestate.decode("latin-1")])
    context = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)
    return context if context.is_valid else None


def _server_attributes(scope: Any, method: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
    }
    if server := scope.get("server"):
        attributes["server.address"] = server[0]
        if server[1] is not None:  # None on a unix socket
            attributes["server.port"] = server[1]
    if client := scope.get("client"):
        attributes["client.address"] = client[0]
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
            break
    return attributes
