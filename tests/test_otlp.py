"""keel's OTLP encoder writes the message the SDK's encoder builds, for every kind of span content."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from keel import otlp

REMOTE_PARENT = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "value")]),
)


def finished_spans() -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    resource = Resource({"service.name": "keel", "service.version": "1.0"}, schema_url="https://example.com/r")
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("keel", "1.0", schema_url="https://example.com/s", attributes={"scope.attr": 1})
    other = provider.get_tracer("opentelemetry.instrumentation.redis")

    server = tracer.start_span(
        "GET /api/v1/things/{id}",
        context=set_span_in_context(NonRecordingSpan(REMOTE_PARENT)),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "http.response.status_code": 500,
            "negative": -3,
            "big": 2**62,
            "ratio": 0.25,
            "is_cached": False,
            "tags": ["a", "é"],
            "counts": [1, 2, 3],
            "long": "x" * 300,
        },
    )
    server.record_exception(ValueError("boom"))
    server.set_status(Status(StatusCode.ERROR, "ValueError"))
    child = other.start_span(
        "GET", context=set_span_in_context(server), kind=SpanKind.CLIENT, links=[Link(REMOTE_PARENT, {"why": "x"})]
    )
    child.add_event("retry", {"attempt": 2})
    child.set_status(Status(StatusCode.OK))
    child.end()
    server.end()
    root = tracer.start_span("realtime.fanout", kind=SpanKind.CONSUMER)  # no parent, no attributes
    root.end()
    for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER):
        tracer.start_span(kind.name, kind=kind, attributes={"http.request.method": "GET"}).end()  # cached pairs
    provider.shutdown()
    return exporter.get_finished_spans()


def test_the_encoding_is_the_sdk_message() -> None:
    spans = finished_spans()
    assert len(spans) == 5
    ours = ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))
    assert ours == sdk_encode_spans(spans)
    assert ours == ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))  # again, from the caches


def test_an_empty_batch_is_an_empty_request() -> None:
    assert otlp.encode_spans([]) == b""


def test_the_exporters_still_have_what_keel_reaches_into() -> None:
    # otlp.http_exporter re-runs OTLPSpanExporter.export's steps on its private state, and otlp.grpc_exporter
    # overrides its translation step: when the SDK renames any of them, this fails before an export silently does
    http = otlp.http_exporter("http://127.0.0.1:9/v1/traces")
    try:
        assert http._shutdown is False  # type: ignore[attr-defined]
        assert isinstance(http._max_request_size, int)  # type: ignore[attr-defined]
        assert callable(http._client.export)  # type: ignore[attr-defined]
    finally:
        http.shutdown()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    assert callable(OTLPSpanExporter._translate_data)
    grpc = otlp.grpc_exporter("http://127.0.0.1:9")
    try:
        assert type(grpc)._translate_data is not OTLPSpanExporter._translate_data  # type: ignore[attr-defined]
    finally:
        grpc.shutdown()


def test_equal_values_of_other_types_are_encoded_as_their_own() -> None:
    # True == 1 == 1.0 and they hash alike: the encoder's cache of attribute pairs must not answer one for another
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "keel"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("keel")
    for value in (1, True, 1.0, "1", 1, False, 0, 0.0, True):
        span = tracer.start_span("x", attributes={"v": value})
        span.add_event("e", {"v": value})
        span.end()
    provider.shutdown()
    spans = exporter.get_finished_spans()
    for batch in (spans, spans[::-1]):  # either order fills the cache first
        assert ExportTraceServiceRequest.FromString(otlp.encode_spans(batch)) == sdk_encode_spans(batch)
