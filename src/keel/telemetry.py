"""OpenTelemetry setup, called once from the lifespan, and the few span helpers keel's own code uses.

Tracing is on only when an OTLP endpoint is configured. Off, `tracer` stays None: no provider, no exporter, no
instrumentation, and every traced path in keel is one `if telemetry.tracer is None` away from its untraced self.
On, spans are keel.tracing's (lean spans behind the OpenTelemetry API, for keel's code and the SQLAlchemy and redis
instrumentations alike), queued and sent in batches by an OTLP exporter (http/protobuf or grpc) in a thread of their
own, so a slow or dead collector costs requests nothing: spans beyond the queue are dropped and counted.

The SDK's pieces read their own OTEL_* variables (a named sampler, timeouts, headers, resource attributes), and
keel.tracing the OTEL_BSP_* sizes as the SDK would; Settings holds only what keel decides on: whether to trace,
which exporter, and whether a sampler was chosen.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from importlib.metadata import version as package_version
from typing import Any, Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from sqlalchemy.ext.asyncio import AsyncEngine

from keel import otlp
from keel.settings import Settings
from keel.tracing import UNSAMPLED, LeanProvider, LeanSpan, LeanTracer, UnsampledSpan

log = logging.getLogger("keel.telemetry")
T = TypeVar("T")

SHUTDOWN_TIMEOUT: Final = 3.0  # seconds the final flush may take; a dead collector must not hold shutdown up
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_propagator: Final = TraceContextTextMapPropagator()
# W3C Trace Context's `traceparent` and its limits, as the API's propagator reads them (a later version may append
# fields); tests/test_telemetry.py holds the two readings to the same answers
_TRACEPARENT: Final = re.compile(rb"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_TRACEPARENT_MAX: Final = 512
_TRACESTATE_MAX: Final = 8192
# OTEL_TRACES_SAMPLER's values (keel.settings.OtelSampler), as the SDK maps them
_STATIC_SAMPLERS: Final[dict[str, Sampler]] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
_RATIO_SAMPLERS: Final = {"traceidratio": TraceIdRatioBased, "parentbased_traceidratio": ParentBasedTraceIdRatio}

# The process's tracer while tracing is on, else None: the one thing hot paths look at.
tracer: Tracer | None = None
_provider: LeanProvider | None = None


def setup(settings: Settings, engine: AsyncEngine) -> bool:
    """Start tracing if an OTLP endpoint is configured: exporter, batch processor, instrumentations. True if on."""
    global tracer, _provider
    protocol = settings.otel_exporter_otlp_traces_protocol or settings.otel_exporter_otlp_protocol
    endpoint = _traces_endpoint(settings, protocol)
    if endpoint is None:
        return False
    resource = Resource.create({SERVICE_VERSION: package_version("keel"), SERVICE_INSTANCE_ID: str(uuid.uuid4())})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # no OTEL_SERVICE_NAME
        resource = resource.merge(Resource({SERVICE_NAME: "keel"}))
    ratio = settings.otel_sample_ratio
    # keel's default sampler is parent-based with `ratio` of new traces, drawn by keel's tracers; a sampler named in
    # OTEL_TRACES_SAMPLER is the SDK's
    sampler = ALWAYS_ON if ratio is not None else _named_sampler(settings)
    # the exporters read the headers, timeout, compression and TLS variables themselves, but the endpoint is
    # settings': they may come from a .env file, which the SDK does not read (it would send to localhost)
    exporter = otlp.grpc_exporter(endpoint) if protocol == "grpc" else otlp.http_exporter(endpoint)
    provider = LeanProvider(resource, exporter, ratio, sampler)
    _instrument(provider, engine)
    _provider, tracer = provider, provider.get_tracer("keel", package_version("keel"))
    return True


def shutdown() -> None:
    """Flush what is queued and stop tracing, waiting at most SHUTDOWN_TIMEOUT for the collector."""
    global tracer, _provider
    provider, tracer, _provider = _provider, None, None
    if provider is None:
        return
    _uninstrument()
    if not provider.shutdown(SHUTDOWN_TIMEOUT):
        log.warning("spans not flushed within %.0f s: the collector is not answering", SHUTDOWN_TIMEOUT)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, for log lines; None unless it is sampled."""
    if tracer is None:
        return None
    span = trace.get_current_span()
    if type(span) is not LeanSpan:  # unsampled, or none: as for ServerSpan.ids()
        return None
    span_context = span.get_span_context()
    return span_context.trace_id.to_bytes(16, "big").hex(), span_context.span_id.to_bytes(8, "big").hex()


# -- spans of keel's own -------------------------------------------------------------------------------------


class ServerSpan:
    """A server span made current for the duration of a request (or a realtime handshake).

    What it records (status, route, error) is set in one call when it ends; an unsampled span records nothing,
    so for most requests under the default sampler this is a context attached and detached.
    """

    __slots__ = ("_is_done", "_is_recorded", "_status", "_token", "method", "scope", "span")

    def __init__(self, span: Span, method: str, scope: Any) -> None:
        self.span = span
        self.method = method
        self.scope = scope  # the router writes the matched route's template into it
        self._status: int | None = None
        if type(span) is UnsampledSpan:  # keel's tracers find it without the API's context (tracing.UNSAMPLED)
            self._is_recorded = False
            self._token: Token[Any] = UNSAMPLED.set(span)
        else:
            self._is_recorded = span.is_recording()
            self._token = otel_context.attach(trace.set_span_in_context(span))
        self._is_done = not self._is_recorded

    def status(self, status: int) -> None:
        """The response status: 5xx marks the span as an error (4xx is the client's, per the conventions)."""
        self._status = status

    def response_started(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """The response head is going out: an event stream's span ends here (its handshake, not its lifetime)."""
        if self._is_done:
            return
        self._status = status
        for name, value in headers:  # a loop, not any(<generator>): a quarter of the cost on a sampled request
            if name == b"content-type":
                if value.startswith(b"text/event-stream"):
                    self.end()
                return

    def end(self, error: BaseException | None = None) -> None:
        """End the span (once), named `{METHOD} {route template}`, or `{METHOD}` alone when no route matched."""
        if self._is_done:
            return
        self._is_done = True
        span = self.span
        # a LeanSpan (every recording span of keel's provider) takes its attributes as they are: keel's are scalars
        attributes: dict[str, Any] = span.attributes if type(span) is LeanSpan else {}
        if self._status is not None:
            attributes["http.response.status_code"] = self._status
        route = self.scope.get("path_template")
        if route:
            attributes["http.route"] = route
            span.update_name(f"{self.method} {route}")
        if type(span) is not LeanSpan:
            span.set_attributes(attributes)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif self._status is not None and self._status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def close(self, status: int | None = None, error: BaseException | None = None) -> None:
        """A handshake's end: record `status`, end the span and leave its context."""
        if status is not None:
            self.status(status)
        self.end(error)
        self.detach()

    def detach(self) -> None:
        """Leave the span's context; call from the task that started it, after end()."""
        if type(self.span) is UnsampledSpan:
            UNSAMPLED.reset(self._token)
        else:
            otel_context.detach(self._token)

    def ids(self) -> tuple[str, str] | None:
        """(trace_id, span_id) in hex for the request's log line when the span is sampled, else None: an unsampled
        request's trace leads nowhere (nothing of it is exported), and its ids would cost drawing them."""
        if not self._is_recorded:
            return None
        span_context = self.span.get_span_context()
        # the ids' bytes in hex: half the CPU of f"{:032x}" and f"{:016x}" (0.96 -> 0.44 µs, load 7-8)
        return span_context.trace_id.to_bytes(16, "big").hex(), span_context.span_id.to_bytes(8, "big").hex()


def start_server_span(scope: Any, headers: Mapping[bytes, bytes] | None = None) -> ServerSpan | None:
    """A server span for an HTTP request or WebSocket handshake, continuing the client's `traceparent`.

    `headers` holds the request's `traceparent` and `tracestate` by name when the caller has read them already (the
    edge middleware's one pass over the headers); None, and they are read from the scope.

    Named for the method only until end() learns the route template: raw paths hold ids and would make span
    names unbounded. The query string is never recorded: /ws?ticket= and /events?ticket= carry credentials.
    Under keel's default sampler the headers are scanned once, for the trace context, and the attributes are built
    only for a span that records them; a dropped request's span is an UnsampledSpan, its ids drawn only if asked.
    """
    if tracer is None:
        return None
    if headers is not None:
        traceparent, tracestate = headers.get(b"traceparent"), headers.get(b"tracestate")
    else:
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"traceparent" and traceparent is None:
                traceparent = value
            elif name == b"tracestate" and tracestate is None:
                tracestate = value
    method = scope.get("method", "GET")  # a WebSocket handshake is a GET
    method = method if method in _METHODS else "_OTHER"
    span: Span
    if type(tracer) is LeanTracer and _provider is not None and _provider.serves_server_spans:  # keel's, always_on
        parent = _remote_parent(traceparent, tracestate) if traceparent is not None else None
        span = tracer.start_server_span(method, parent)
        if type(span) is LeanSpan:
            span.attributes.update(_server_attributes(scope, method))
        return ServerSpan(span, method, scope)
    # another named sampler may look at the attributes: the API's way, with the propagator's parsing
    carrier = {"traceparent": traceparent.decode("latin-1")} if traceparent is not None else {}
    if carrier and tracestate is not None:
        carrier["tracestate"] = tracestate.decode("latin-1")
    context = _propagator.extract(carrier) if carrier else None
    attributes = _server_attributes(scope, method)
    span = tracer.start_span(method, context=context, kind=SpanKind.SERVER, attributes=attributes)
    return ServerSpan(span, method, scope)


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


def _server_attributes(scope: Any, method: str) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
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


def start_span(name: str, *, parent: Context | None = None, kind: SpanKind = SpanKind.INTERNAL) -> Span:
    """A span of keel's own under the current one (or `parent`); the caller has checked that tracing is on."""
    assert tracer is not None
    return tracer.start_span(name, context=parent, kind=kind)


def traced_job(name: str, job: Callable[[], T]) -> Callable[[], T]:
    """`job` in a span of its own, parented to the caller's span wherever it runs (a pool thread, say).

    Executors do not carry contextvars over to their threads, so the parent is captured now, by the caller.
    """
    parent = otel_context.get_current()
    if UNSAMPLED.get() is not None and trace.get_current_span(parent) is INVALID_SPAN:
        return job  # under an unsampled request (keel.tracing.UNSAMPLED): its span would be the request's, dropped

    def run() -> T:
        span = start_span(name, parent=parent)
        try:
            return job()
        finally:
            span.end()

    return run


# A broker message from a traced publish: this byte, the publish span's 55-byte `traceparent`, then the
# message itself. JSON never starts with it, so a subscriber tells the two apart by one byte, tracing on or off.
TRACED: Final = 0x1E  # ASCII record separator
_TRACEPARENT_LEN: Final = 55


def with_traceparent(data: bytes, span: Span) -> bytes:
    """`data` prefixed with `span`'s W3C `traceparent`, for a subscriber to continue the trace."""
    ctx = span.get_span_context()
    return b"%c00-%032x-%016x-%02x%b" % (TRACED, ctx.trace_id, ctx.span_id, int(ctx.trace_flags), data)


def split_traceparent(data: bytes) -> tuple[bytes, bytes | None]:
    """A broker message's own bytes, and the `traceparent` it carried (None if it carried none)."""
    if not data or data[0] != TRACED:
        return data, None
    return data[1 + _TRACEPARENT_LEN :], data[1 : 1 + _TRACEPARENT_LEN]


def context_of(parent: bytes) -> Context:
    """The context a `traceparent` names, to start a child of a span in another task or process."""
    return _propagator.extract({"traceparent": parent.decode("ascii", "replace")})


# -- setup details -------------------------------------------------------------------------------------------


def _traces_endpoint(settings: Settings, protocol: str) -> str | None:
    """Where spans go, as the OTLP exporter specification resolves it: the traces endpoint as given, else the
    general one (with `v1/traces` appended for http/protobuf); None when neither is set (tracing off)."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    return endpoint if protocol == "grpc" else f"{endpoint.removesuffix('/')}/v1/traces"


def _named_sampler(settings: Settings) -> Sampler:
    """The SDK's sampler that OTEL_TRACES_SAMPLER names, built as the SDK's provider builds it from the environment,
    but from settings, which a .env file reaches too."""
    name = settings.otel_traces_sampler
    assert name is not None  # else keel's default sampler applies
    ratio_sampler = _RATIO_SAMPLERS.get(name)
    if ratio_sampler is None:
        return _STATIC_SAMPLERS[name]
    arg = settings.otel_traces_sampler_arg
    return ratio_sampler(1.0 if arg is None else float(arg))  # no argument: 1.0, as the SDK has it


def _instrument(provider: LeanProvider, engine: AsyncEngine) -> None:
    # imported here: instrumenting patches redis-py and hooks the engine, which only a traced process wants
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1 but hooks only the stable engine events, and
    # tests/test_telemetry.py checks that SQL spans arrive on keel's SQLAlchemy
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True)
    RedisInstrumentor().instrument(tracer_provider=provider)


def _uninstrument() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().uninstrument()
    RedisInstrumentor().uninstrument()
