"""keel's lean spans honour the OpenTelemetry API the way instrumentations use it, and their export queue never
waits: what does not fit is dropped and counted."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from prometheus_client import REGISTRY

from keel import otlp, server_span
from keel.tracing import SAMPLED, LeanProvider, LeanSpan, span_context


class Collecting(SpanExporter):
    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.batches: list[bytes] = []
        self.result = result

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.batches.append(otlp.encode_spans(spans))
        return self.result

    def shutdown(self) -> None:
        pass


def dropped() -> float:
    return REGISTRY.get_sample_value("keel_spans_dropped_total") or 0.0


def test_a_span_records_what_the_api_says_and_is_exported_once() -> None:
    exporter = Collecting()
    provider = LeanProvider(Resource({"service.name": "keel"}), exporter, None, ALWAYS_ON)
    tracer = provider.get_tracer("opentelemetry.instrumentation.redis", "1.0")
    try:
        with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
            child = tracer.start_span("GET", kind=SpanKind.CLIENT, attributes={"db.system": "redis", "nothing": None})
            child.set_attribute("tags", ["a", "b"])
            child.set_attributes({"db.statement": "GET ?", "retries": 2})
            child.record_exception(ValueError("boom"))
            child.set_status(Status(StatusCode.OK))
            child.set_status(Status(StatusCode.ERROR, "late"))  # OK is final
            child.update_name("GET key")
            child.end()
            child.end()  # ended once: queued once
            child.set_attribute("after", 1)  # ignored once ended
        assert isinstance(child, LeanSpan)
        assert isinstance(parent, LeanSpan)
        assert child.parent == parent.get_span_context()
        assert child.attributes == {"db.system": "redis", "tags": ("a", "b"), "db.statement": "GET ?", "retries": 2}
        assert child.status.status_code is StatusCode.OK
        assert [event.name for event in child.events] == ["exception"]
        assert child.events[0].attributes["exception.type"] == "ValueError"
        provider.force_flush()
        (batch,) = exporter.batches
        request = ExportTraceServiceRequest.FromString(batch)
        spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        assert [span.name for span in spans] == ["GET key", "parent"]
        assert spans[0].parent_span_id == spans[1].span_id
        assert request.resource_spans[0].scope_spans[0].scope.name == "opentelemetry.instrumentation.redis"
    finally:
        provider.shutdown()
    assert not provider.queue._thread.is_alive()


def test_the_queue_drops_what_does_not_fit_and_counts_refused_batches(monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")  # and so batches of 4 at most

    class Stuck(Collecting):
        """Refuses every batch, the first only once the test lets it go."""

        def __init__(self) -> None:
            super().__init__(SpanExportResult.FAILURE)
            self.exporting, self.release = threading.Event(), threading.Event()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.exporting.set()
            self.release.wait(10)
            return super().export(spans)

    exporter = Stuck()
    provider = LeanProvider(Resource({}), exporter, 1.0, ALWAYS_ON)
    tracer = provider.get_tracer("keel")
    before = dropped()
    try:
        for _ in range(4):  # a full batch wakes the export thread, which takes it and hangs on the collector
            tracer.start_span("x").end()
        assert exporter.exporting.wait(10)
        for _ in range(6):  # four wait in the queue, two find it full and are dropped at once
            tracer.start_span("x").end()
        assert dropped() == before + 2
        exporter.release.set()
        provider.force_flush()  # after the thread's export (one at a time): the queued four went, refused, too
        assert dropped() == before + 10
    finally:
        exporter.release.set()
        provider.shutdown()


def test_a_woken_queue_sends_full_batches_and_leaves_the_rest_for_later(monkeypatch: Any) -> None:
    # a queue that gets spans while it exports must still send full batches, not whatever came in meanwhile: each
    # POST has a fixed cost (BENCHMARKS.md 2026-12-05 14:00)
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # never, in this test

    class Signalling(Collecting):
        def __init__(self) -> None:
            super().__init__()
            self.exported, self.sizes = threading.Event(), list[int]()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.sizes.append(len(spans))
            self.exported.set()
            return super().export(spans)

    exporter = Signalling()
    provider = LeanProvider(Resource({}), exporter, 1.0, ALWAYS_ON)
    tracer = provider.get_tracer("keel")
    try:
        with provider.queue._export_lock:  # the thread, woken by the fourth, waits while six more come
            for _ in range(10):
                tracer.start_span("x").end()
        assert exporter.exported.wait(10)
        exporter.exported.clear()
        assert not exporter.exported.wait(0.3)  # woken once, it sent the two full batches it found
        assert exporter.sizes == [4, 4]
        assert len(provider.queue._spans) == 2
        provider.force_flush()  # a flush (and the delay, and shutdown) sends what waits
        assert exporter.sizes == [4, 4, 2]
    finally:
        provider.shutdown()


def test_a_named_sampler_is_asked_and_unsampled_children_are_their_parent() -> None:
    provider = LeanProvider(Resource({}), Collecting(), None, TraceIdRatioBased(0.0))
    tracer = provider.get_tracer("keel")
    try:
        root = tracer.start_span("root")
        assert not root.is_recording()
        assert root.get_span_context().is_valid  # ids for the log lines all the same
        child = tracer.start_span("child", context=trace.set_span_in_context(root))
        assert child is root
    finally:
        provider.shutdown()


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF])
@pytest.mark.parametrize("flags", [0, 1, 3])
@pytest.mark.parametrize("has_parent", [False, True])
def test_a_server_span_decided_without_the_api_is_the_one_the_api_would_start(
    sampler: Sampler, flags: int, has_parent: bool
) -> None:
    # always_on and always_off decide server spans in keel/server_span.py, as keel's default does
    provider = LeanProvider(Resource({}), Collecting(), None, sampler)
    tracer = provider.get_tracer("keel")
    state = TraceState([("vendor", "value")])
    parent = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, True, TraceFlags(flags), state)
    headers = {b"traceparent": b"00-%032x-%016x-%02x" % (parent.trace_id, parent.span_id, flags)}
    headers[b"tracestate"] = b"vendor=value"
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    try:
        assert provider.serves_server_spans
        fast = server_span.start(tracer, scope, headers if has_parent else {})
        fast.detach()
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if has_parent else None
        general = tracer.start_span("GET", context=context, kind=SpanKind.SERVER)
        assert isinstance(fast, type(general))
        assert fast.is_recording() is general.is_recording() is (sampler is ALWAYS_ON)
        ours, theirs = fast.get_span_context(), general.get_span_context()
        assert (ours.trace_flags, ours.trace_state, ours.is_remote) == (theirs.trace_flags, theirs.trace_state, False)
        if has_parent:
            assert ours.trace_id == theirs.trace_id == parent.trace_id
            assert ours.trace_state == state
        if isinstance(fast, LeanSpan) and isinstance(general, LeanSpan):
            assert fast.parent == general.parent == (parent if has_parent else None)
            assert fast.kind is general.kind is SpanKind.SERVER
    finally:
        provider.shutdown()


@pytest.mark.parametrize("state", [None, TraceState([("vendor", "value")])])
def test_a_span_context_built_without_its_checks_is_the_apis(state: TraceState | None) -> None:
    # keel.tracing.span_context builds SpanContext's tuple itself: this fails if opentelemetry-api changes its layout
    ours = span_context(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, SAMPLED, state)
    theirs = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, False, SAMPLED, state)
    assert type(ours) is SpanContext
    assert tuple(ours) == tuple(theirs)
    fields = ("trace_id", "span_id", "is_remote", "trace_flags", "trace_state", "is_valid")
    assert [getattr(ours, name) for name in fields] == [getattr(theirs, name) for name in fields]
    assert ours.is_valid
