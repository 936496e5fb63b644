"""The server span under keel's default sampler: the client's `traceparent` read as the API's propagator reads it,
an unsampled request that draws no ids unless asked and still continues the client's trace downstream, and access
lines that carry ids only for sampled requests."""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace.span import TraceState
from sqlalchemy.ext.asyncio import create_async_engine

from keel import telemetry
from keel.http.middleware import EdgeMiddleware, edge_headers
from keel.logs import AccessLog
from keel.server_span import RequestSpan, UnsampledRequest, _remote_parent
from keel.settings import Settings
from keel.tracing import REQUEST_SPAN, LeanSpan, UnsampledSpan

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
async def tracing(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Tracing on with keel's default sampler at the parametrized ratio, towards a port that never answers."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = Settings(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_TRACES_SAMPLER_ARG=request.param)
        try:
            assert telemetry.setup(settings, engine)
            yield
        finally:
            telemetry.shutdown()
            await engine.dispose()


def scope_with(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/x", "headers": list(headers), "path_template": "/x"}


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-00",
        f" \t00-{TRACE_ID}-{SPAN_ID}-01 ",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has no more fields
        f"01-{TRACE_ID}-{SPAN_ID}-01-extra",  # a later version may
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"00-{TRACE_ID}-{SPAN_ID}-01" + " " * 600,
        "garbage",
    ],
)
@pytest.mark.parametrize("tracestate", [None, "vendor=value,other=1", "not a state", "k=" + "v" * 9000])
def test_the_traceparent_is_read_as_the_propagator_reads_it(traceparent: str, tracestate: str | None) -> None:
    carrier = {"traceparent": traceparent} | ({"tracestate": tracestate} if tracestate is not None else {})
    expected = trace.get_current_span(telemetry._propagator.extract(carrier)).get_span_context()
    ours = _remote_parent(traceparent.encode(), tracestate.encode() if tracestate is not None else None)
    if not expected.is_valid:
        assert ours is None
    else:
        assert ours == expected  # ids, flags, remote, and the trace state
        assert ours.trace_state == expected.trace_state


@pytest.mark.parametrize("tracing", ["0"], indirect=True)
@pytest.mark.parametrize("read_by", ["the edge", "the span"])
async def test_several_tracestate_headers_are_one_list(tracing: None, read_by: str) -> None:
    traceparent = f"00-{TRACE_ID}-{SPAN_ID}-01".encode()
    headers = [(b"tracestate", b"a=1,b=2"), (b"traceparent", traceparent), (b"tracestate", b"c=3")]
    # as the propagator reads several headers of one name (TraceState.from_header joins them)
    expected = TraceState.from_header(["a=1,b=2", "c=3"])
    assert list(expected.items()) == [("a", "1"), ("b", "2"), ("c", "3")]
    found = edge_headers(headers) if read_by == "the edge" else None
    server_span = telemetry.start_server_span(scope_with(*headers), found)
    assert server_span is not None
    server_span.close(200)
    assert server_span.get_span_context().trace_state == expected


@pytest.mark.parametrize("tracing", ["1"], indirect=True)  # the client's decision wins over the odds
async def test_an_unsampled_request_draws_no_ids_yet_continues_the_clients_trace(tracing: None) -> None:
    server_span = telemetry.start_server_span(scope_with((b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-00".encode())))
    assert server_span is not None
    span = server_span
    try:
        assert isinstance(span, UnsampledSpan)
        assert not span.is_recording()
        assert server_span.ids() is None
        assert telemetry.current_ids() is None
        child = telemetry.start_span("realtime.publish")  # children are the request's span itself
        assert child is span
        assert span._context is None  # nothing asked for ids so far: none drawn
        # sent downstream (a broker message, say), it names the client's trace, its own span, and "not sampled"
        sent = telemetry.with_traceparent(b"{}", child)
        _, parent = telemetry.split_traceparent(sent)
        assert parent is not None
        version, trace_id, span_id, flags = parent.decode().split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "00")
        assert span_id not in (SPAN_ID, "0" * 16)
        assert span.get_span_context() is span.get_span_context()  # drawn once
    finally:
        server_span.close(200)


@pytest.mark.parametrize("tracing", ["0"], indirect=True)
async def test_a_new_unsampled_trace_draws_its_ids_only_when_asked(tracing: None) -> None:
    server_span = telemetry.start_server_span(scope_with((b"user-agent", b"t/1")))
    assert server_span is not None
    span = server_span
    assert isinstance(span, UnsampledSpan)
    assert span._context is None
    context = span.get_span_context()
    assert context.is_valid
    assert not context.is_remote
    assert not context.trace_flags.sampled
    server_span.close(200)


@pytest.mark.parametrize("tracing", ["0"], indirect=True)  # the client's decision wins over the odds
async def test_a_sampled_request_records_its_attributes_and_continues_the_client(tracing: None) -> None:
    scope = scope_with((b"user-agent", b"t/1"), (b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode()))
    scope |= {"client": ("10.0.0.1", 5000), "server": ("127.0.0.1", 8000), "scheme": "https"}
    server_span = telemetry.start_server_span(scope)
    assert server_span is not None
    span = server_span
    assert isinstance(span, LeanSpan)
    server_span.close(503)
    assert span.name == "GET /x"
    assert span.parent is not None
    assert (format(span.parent.span_id, "016x"), span.parent.is_remote) == (SPAN_ID, True)
    assert format(span.get_span_context().trace_id, "032x") == TRACE_ID
    assert span.attributes == {
        "http.request.method": "GET",
        "url.path": "/x",
        "url.scheme": "https",
        "server.address": "127.0.0.1",
        "server.port": 8000,
        "client.address": "10.0.0.1",
        "user_agent.original": "t/1",
        "http.response.status_code": 503,
        "http.route": "/x",
    }
    assert span.status.status_code is trace.StatusCode.ERROR


@pytest.mark.parametrize("tracing", ["0"], indirect=True)
@pytest.mark.parametrize("flags", ["01", "00"])
async def test_the_access_line_carries_ids_only_for_a_sampled_request(tracing: None, flags: str) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ids = telemetry.current_ids()
        seen.append(ids[1] if ids is not None else "")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    stream = io.BytesIO()
    edge = EdgeMiddleware(app, access_log=AccessLog("json", stream))
    await edge(scope_with((b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-{flags}".encode())), None, send)  # type: ignore[arg-type]
    edge.access_log.flush()  # type: ignore[union-attr]
    line = json.loads(stream.getvalue())
    if flags == "01":
        assert (line["trace_id"], line["span_id"]) == (TRACE_ID, seen[0])
        assert seen[0] not in ("", SPAN_ID)
    else:
        assert (line["trace_id"], line["span_id"], seen) == (None, None, [""])


SAMPLED_BY_THE_CLIENT = (b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode())


async def through_the_edge(scope: dict[str, Any], app: Any) -> RequestSpan:
    """`scope` served by `app` behind the edge; the request's span, as the app found it."""
    spans: list[Any] = []

    async def served(scope: Any, receive: Any, send: Any) -> None:
        spans.append(REQUEST_SPAN.get())
        await app(scope, receive, send)

    async def send(message: Any) -> None:
        pass

    with contextlib.suppress(RuntimeError):
        await EdgeMiddleware(served)(scope, None, send)  # type: ignore[arg-type]
    [span] = spans
    assert isinstance(span, RequestSpan)
    assert REQUEST_SPAN.get() is None  # left when the request ended
    return span


@pytest.mark.parametrize("tracing", ["0"], indirect=True)
async def test_a_request_that_fails_ends_its_span_as_an_error_with_the_exception(tracing: None) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    span = await through_the_edge(scope_with(SAMPLED_BY_THE_CLIENT), app)
    assert span.end_time is not None
    assert (span.status.status_code, span.status.description) == (trace.StatusCode.ERROR, "RuntimeError")
    [event] = span.events
    assert (event.name, event.attributes["exception.type"], event.attributes["exception.message"]) == (
        "exception",
        "RuntimeError",
        "boom",
    )


@pytest.mark.parametrize("tracing", ["0"], indirect=True)
async def test_an_event_streams_span_ends_with_its_response_head(tracing: None) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        span = REQUEST_SPAN.get()
        assert isinstance(span, RequestSpan)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        assert span.end_time is not None  # the handshake's span, not the stream's life
        ended = span.end_time
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        assert span.end_time == ended

    span = await through_the_edge(scope_with(SAMPLED_BY_THE_CLIENT), app)
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code is trace.StatusCode.UNSET


@pytest.mark.parametrize("tracing", ["0"], indirect=True)
async def test_a_head_requests_span_is_named_for_the_route_its_get_matched(tracing: None) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_template"] = "/items/{item_id}"  # the router writes into the GET copy the edge made
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    scope = scope_with(SAMPLED_BY_THE_CLIENT) | {"method": "HEAD", "path": "/items/7"}
    del scope["path_template"]
    span = await through_the_edge(scope, app)
    assert span.name == "HEAD /items/{item_id}"
    assert span.attributes["http.route"] == "/items/{item_id}"


@pytest.mark.parametrize(("ratio", "is_sampled"), [("1", True), ("0", False)])
async def test_another_named_sampler_decides_the_server_span_with_its_attributes(
    tmp_path: Path, ratio: str, is_sampled: bool
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    settings = Settings(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG=ratio,
    )
    try:
        assert telemetry.setup(settings, engine)
        assert telemetry._provider is not None
        assert not telemetry._provider.serves_server_spans  # the API's way
        state = (b"tracestate", b"vendor=value")
        server_span = telemetry.start_server_span(scope_with(SAMPLED_BY_THE_CLIENT, state, (b"user-agent", b"t/1")))
        assert server_span is not None
        assert REQUEST_SPAN.get() is server_span
        server_span.close(200)
        context = server_span.get_span_context()
        assert format(context.trace_id, "032x") == TRACE_ID  # the client's trace goes on, sampled or not
        assert context.trace_state == TraceState([("vendor", "value")])
        if is_sampled:
            assert isinstance(server_span, RequestSpan)
            assert server_span.parent is not None
            assert format(server_span.parent.span_id, "016x") == SPAN_ID
            assert server_span.attributes["user_agent.original"] == "t/1"
            assert server_span.name == "GET /x"
        else:
            assert isinstance(server_span, UnsampledRequest)
            assert not context.trace_flags.sampled
        assert REQUEST_SPAN.get() is None
    finally:
        telemetry.shutdown()
        await engine.dispose()
