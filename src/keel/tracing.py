"""keel's own spans behind the OpenTelemetry API: a provider, tracers and spans that record only what keel exports.
Ended, they go to keel/span_queue.py's bounded queue, which a thread of its own sends in batches through an OTLP
exporter.

Why not the SDK's: measured with bench/paired.py on the 2-core development VM (always_on, `GET /api/v1/public`,
two spans a request), the SDK's span cost ~40 µs on the event loop's thread from start to end (the span object and
its lock, a SpanContext, attribute validation into BoundedAttributes, the span processor chain, the ReadableSpan
copy at end, the batch processor's lock and condition), and its batch processor ~15 µs more in its thread. The SDK
is built for generality (several processors, limits, views, metrics of its own); keel has one processor, one
exporter and a bounded set of attributes. These spans are a plain object with slots; end() appends them to the
export queue, whose thread encodes them with keel/otlp.py and hands the bytes to the SDK's OTLP exporter
(transport, retries, headers, TLS, compression stay its). The numbers are in BENCHMARKS.md.

What they honour of the API: ids and parent, name, kind, start and end times, attributes (str, bool, int, float and
sequences of them; others are dropped as the SDK drops them), events (record_exception included), links, status
(an OK status is final), update_name, is_recording, use as a context manager. The sampler: keel's default (parent
based, a ratio of new traces drawn here) or any the SDK builds from OTEL_TRACES_SAMPLER, asked per span as the SDK
asks it (server spans under keel's default, always_on or always_off are decided in keel/server_span.py, without the
API's context).
A RECORD_ONLY decision records nothing here (nothing would be exported either); a dropped span is an
UnsampledSpan, whose ids are drawn only if asked for. No span limits: keel and its two instrumentations
(SQLAlchemy, redis) set a bounded handful of attributes per span.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from time import time_ns
from types import TracebackType
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value  # the API's own check, for the rare non-scalar value
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from keel.span_queue import ExportQueue

_SCALARS: Final = (str, bool, int, float)
SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
NOT_SAMPLED: Final = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_UNSET: Final = Status(StatusCode.UNSET)
_bits = random.getrandbits  # ids as the SDK's RandomIdGenerator draws them (random, not secret)


class Event:
    """A span event, as keel/otlp.py reads one."""

    __slots__ = ("attributes", "name", "timestamp")
    dropped_attributes: Final = 0

    def __init__(self, name: str, attributes: dict[str, Any], timestamp: int) -> None:
        self.name, self.attributes, self.timestamp = name, attributes, timestamp


class LeanSpan(trace.Span):
    """A recording span; ended, it waits in its provider's queue for the export thread (keel/otlp.py reads it)."""

    __slots__ = (
        "_context",
        "_provider",
        "attributes",
        "end_time",
        "events",
        "instrumentation_scope",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )
    dropped_attributes: Final = 0
    dropped_events: Final = 0
    dropped_links: Final = 0

    def __init__(
        self,
        provider: LeanProvider,
        scope: InstrumentationScope,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
        start_time: int | None,
    ) -> None:
        self._provider = provider
        self.instrumentation_scope = scope
        self.name = name
        self._context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.links = links
        self.events: list[Event] = []
        self.status = _UNSET
        self.start_time = start_time or time_ns()
        self.end_time: int | None = None

    @property
    def resource(self) -> Resource:
        return self._provider.resource

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None:
            _set(self.attributes, key, value)

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is None:
            for key, value in attributes.items():
                _set(self.attributes, key, value)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self.end_time is None:
            self.events.append(Event(name, _cleaned(attributes), timestamp or time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            self.links = [*self.links, Link(context, _cleaned(attributes))]

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:  # OK is final (the API's rule)
            return
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or time_ns()
        self._provider.queue.add(self)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.end()


def _set(attributes: dict[str, Any], key: str, value: object) -> None:
    if type(value) in _SCALARS:
        attributes[key] = value
    elif (cleaned := _clean_attribute_value(value, None)) is not None:  # type: ignore[call-overload]  # what it checks
        attributes[key] = cleaned


def _cleaned(attributes: Attributes) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    if attributes:
        for key, value in attributes.items():
            _set(cleaned, key, value)
    return cleaned


class UnsampledSpan(NonRecordingSpan):
    """A span the sampler dropped: it records nothing, and its ids are drawn only if something asks for them (a
    `traceparent` sent downstream, say): most requests under the default sampler never do. A client's trace id, when
    the request continued one, is kept, so whatever it sends on stays in the client's trace."""

    __slots__ = ("_flags", "_trace_id", "_trace_state")

    def __init__(
        self, trace_id: int = 0, flags: TraceFlags = NOT_SAMPLED, trace_state: TraceState | None = None
    ) -> None:
        """A new trace's span (no `trace_id`: one is drawn when asked for), or one continuing a trace."""
        self._context: SpanContext | None = None  # type: ignore[assignment]  # drawn on first use
        self._trace_id, self._flags, self._trace_state = trace_id, flags, trace_state

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            trace_id = self._trace_id or _bits(128) or 1
            context = self._context = SpanContext(trace_id, _bits(64) or 1, False, self._flags, self._trace_state)
        return context


# The request (or handshake) this task serves, sampled or not (keel/server_span.py): its span is set here, not
# attached to the API's context, whose attach and detach cost eleven calls a request (BENCHMARKS.md 2026-12-05).
# keel's tracers look here when the API's context has no span, so what the request starts (SQL, Redis, keel's own)
# is its child, or dropped with it, rather than rooting a trace of its own.
REQUEST_SPAN: Final[ContextVar[trace.Span | None]] = ContextVar("keel_request_span", default=None)


def span_context(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState | None) -> SpanContext:
    """A local span's context, for ids drawn here (in range, never zero): the tuple SpanContext.__new__ builds,
    without its Python-level checks (~2 500 instructions a span). opentelemetry-api is pinned by the SDK's exact
    requirement; tests/test_tracing.py fails if the tuple's layout moves."""
    state = DEFAULT_TRACE_STATE if state is None else state
    return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, True))


class LeanTracer(trace.Tracer):
    """Spans of one instrumentation scope; the work is skipped for spans no one will see."""

    def __init__(self, provider: LeanProvider, scope: InstrumentationScope) -> None:
        self.provider = provider
        self.scope = scope

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context)
        if context is None and parent is trace.INVALID_SPAN and (request := REQUEST_SPAN.get()) is not None:
            parent = request  # the request's span, which left the API's context alone (see REQUEST_SPAN)
        if isinstance(parent, UnsampledSpan):  # see below: without drawing its ids
            return parent
        parent_context: SpanContext | None = parent.get_span_context()
        provider = self.provider
        if parent_context is not None and parent_context.is_valid:
            # Under a local parent that was not sampled, the parent itself: every sampler the SDK ships would drop
            # the child (parent-based ones follow the parent, `traceidratio` sees the same trace id), so a log
            # line or a `traceparent` taken inside reads the parent's trace, and the child costs a context lookup.
            if not parent_context.trace_flags.sampled and not parent_context.is_remote:
                return parent
            trace_id = parent_context.trace_id
        else:
            parent_context, trace_id = None, 0
        ratio = provider.root_ratio
        trace_state: TraceState | None = None
        if ratio is not None:  # keel's default: follow the parent, or draw `ratio` of new traces
            if parent_context is not None:
                sampled, trace_state = parent_context.trace_flags.sampled, parent_context.trace_state
            else:
                sampled = random.random() < ratio
            values = _cleaned(attributes) if sampled else {}
        elif (sampler := provider.sampler) is ALWAYS_ON or sampler is ALWAYS_OFF:
            sampled, values = sampler is ALWAYS_ON, _cleaned(attributes) if sampler is ALWAYS_ON else {}
            if parent_context is not None:  # the parent's state goes on, as the SDK's static samplers keep it
                trace_state = parent_context.trace_state
        else:
            trace_id = trace_id or _bits(128) or 1  # a ratio sampler decides on it
            result = sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled = result.decision.is_sampled()  # type: ignore[no-untyped-call]
            values, trace_state = _cleaned(result.attributes), result.trace_state
        if not sampled:
            # a remote parent's trace goes on with its flags (the client's word on its trace id's randomness)
            flags = TraceFlags(parent_context.trace_flags & ~1) if parent_context is not None else NOT_SAMPLED
            return UnsampledSpan(trace_id, flags, trace_state)
        context_of_span = span_context(trace_id or _bits(128) or 1, _bits(64) or 1, SAMPLED, trace_state)
        return LeanSpan(
            provider, self.scope, name, context_of_span, parent_context, kind, values, list(links or ()), start_time
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's is a context manager of its own kind
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class LeanProvider(trace.TracerProvider):
    """Tracers for keel and its instrumentations, their spans bound for one exporter.

    `root_ratio` is keel's default sampler's share of new traces (parent-based); None defers to `sampler`.
    """

    def __init__(self, resource: Resource, exporter: SpanExporter, root_ratio: float | None, sampler: Sampler) -> None:
        self.resource = resource
        self.root_ratio = root_ratio
        self.sampler = sampler
        # whether keel/server_span.py can decide for a server span (else the sampler is asked, the API's way)
        self.serves_server_spans = root_ratio is not None or sampler is ALWAYS_ON or sampler is ALWAYS_OFF
        self.queue = ExportQueue(exporter)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> LeanTracer:
        scope = InstrumentationScope(instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        return LeanTracer(self, scope)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.queue.flush()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Send what is queued and stop; False if `timeout` seconds were not enough."""
        return self.queue.shutdown(timeout)
