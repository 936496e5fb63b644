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
import uuid
from collections.abc import Callable, Mapping
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
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy.ext.asyncio import AsyncEngine

from keel import otlp, server_span
from keel.server_span import ServerSpan
from keel.settings import Settings
from keel.tracing import REQUEST_SPAN, LeanProvider, LeanSpan, LeanTracer, UnsampledSpan

log = logging.getLogger("keel.telemetry")
T = TypeVar("T")

SHUTDOWN_TIMEOUT: Final = 3.0  # seconds the final flush may take; a dead collector must not hold shutdown up
_propagator: Final = TraceContextTextMapPropagator()
# OTEL_TRACES_SAMPLER's values (keel.settings.OtelSampler), as the SDK maps them
_STATIC_SAMPLERS: Final[dict[str, Sampler]] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
_RATIO_SAMPLERS: Final = {"traceidratio": TraceIdRatioBased, "parentbased_traceidratio": ParentBasedTraceIdRatio}

# The process's tracer while tracing is on, else None: the one thing hot paths look at.
tracer: LeanTracer | None = None
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
    if span is INVALID_SPAN:
        span = REQUEST_SPAN.get() or span
    if not isinstance(span, LeanSpan):  # unsampled, or none: as for a request's access line
        return None
    span_context = span.get_span_context()
    return span_context.trace_id.to_bytes(16, "big").hex(), span_context.span_id.to_bytes(8, "big").hex()


# -- spans of keel's own -------------------------------------------------------------------------------------


def start_server_span(scope: Any, headers: Mapping[bytes, bytes] | None = None) -> ServerSpan | None:
    """The server span of an HTTP request or WebSocket handshake (keel/server_span.py), continuing the client's
    `traceparent`, or None while tracing is off. `headers` holds `traceparent` and `tracestate` by name when the
    caller has read the headers already; None, and they are read from the scope."""
    if tracer is None:
        return None
    return server_span.start(tracer, scope, headers)


def start_span(name: str, *, parent: Context | None = None, kind: SpanKind = SpanKind.INTERNAL) -> Span:
    """A span of keel's own under the current one (or `parent`); the caller has checked that tracing is on."""
    assert tracer is not None
    return tracer.start_span(name, context=parent, kind=kind)


def traced_job(name: str, job: Callable[[], T]) -> Callable[[], T]:
    """`job` in a span of its own, parented to the caller's span wherever it runs (a pool thread, say).

    Executors do not carry contextvars over to their threads, so the parent is captured now, by the caller.
    """
    parent = otel_context.get_current()
    if trace.get_current_span(parent) is INVALID_SPAN and (request := REQUEST_SPAN.get()) is not None:
        if isinstance(request, UnsampledSpan):
            return job  # under an unsampled request: its span would be the request's, dropped
        parent = trace.set_span_in_context(request, parent)  # the request's span is not in the API's context

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
