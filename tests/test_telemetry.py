"""Tracing: spans reach real OTLP receivers (HTTP and gRPC) from `keel serve`; a dead collector costs nothing;
tracing off builds nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_args

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect

from keel import telemetry
from keel.http.middleware import EdgeMiddleware
from keel.settings import OtelSampler, Settings
from tests.conftest import Backend
from tests.realtime.conftest import backend_env, receive, subscribe
from tests.servers import free_port, keel_serve

PASSWORD = "correct horse battery"
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collected:
    """Every span the receiver got, decoded."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                attributes={kv.key: _value(kv.value) for kv in span.attributes},
                                resource=resource,
                            )
                        )

    def named(self, name: str) -> list[Span]:
        with self._lock:
            return [span for span in self.spans if span.name == name]

    def wait_for(self, name: str, within: float = 10) -> list[Span]:
        deadline = time.monotonic() + within
        while not (found := self.named(name)):
            assert time.monotonic() < deadline, f"no {name!r} span; got {sorted({s.name for s in self.spans})}"
            time.sleep(0.05)
        return found


@contextmanager
def http_receiver() -> Iterator[tuple[str, Collected]]:
    """An OTLP/HTTP receiver on a loopback port: POST /v1/traces with protobuf."""
    collected = Collected()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces"
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            collected.add(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", collected
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def grpc_receiver() -> Iterator[tuple[str, Collected]]:
    """An OTLP/gRPC receiver on a loopback port."""
    collected = Collected()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(  # the generated servicer's name
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            collected.add(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", collected
    finally:
        server.stop(grace=None)


def traced_env(backend: Backend, endpoint: str, protocol: str) -> dict[str, str | None]:
    return backend_env(
        backend,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [span for span in spans if span.parent_id == parent.span_id and span.trace_id == parent.trace_id]


def sign_up_with_a_channel(base: str) -> tuple[dict[str, str], dict[str, str], str, str]:
    """Register (continuing a client's trace), log in, create a channel, take a ticket."""
    traceparent = {"traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"}
    body = {"username": "ada", "email": "ada@example.com", "password": PASSWORD}
    assert httpx.post(f"{base}/api/v1/users", json=body, headers=traceparent).status_code == 201
    tokens = httpx.post(f"{base}/api/v1/auth/token", data={"username": "ada", "password": PASSWORD}).json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    channel = httpx.post(f"{base}/api/v1/channels", json={"name": "general"}, headers=auth).json()["id"]
    ticket = httpx.post(f"{base}/api/v1/realtime/tickets", headers=auth).json()["ticket"]
    return tokens, auth, channel, ticket


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_reach_the_collector_as_one_tree_per_request(
    backend: Backend, tmp_path: Path, protocol: str
) -> None:
    receiver = http_receiver if protocol == "http/protobuf" else grpc_receiver
    with receiver() as (endpoint, collected), keel_serve(traced_env(backend, endpoint, protocol), tmp_path) as server:
        base = server.url
        tokens, auth, channel, ticket = await asyncio.to_thread(sign_up_with_a_channel, base)
        ws_url = base.replace("http://", "ws://") + f"/ws?ticket={ticket}"
        async with connect(ws_url) as ws:
            await subscribe(ws, channel)
            posted = await asyncio.to_thread(
                httpx.post, f"{base}/api/v1/channels/{channel}/messages", json={"body": "hi"}, headers=auth
            )
            assert posted.status_code == 201
            frame = await receive(ws)
            assert frame["type"] == "message"
            assert frame["message"] == posted.json()  # the broker's trace header never reaches a client
        fanout = await asyncio.to_thread(collected.wait_for, "realtime.fanout")
        await asyncio.to_thread(collected.wait_for, "GET /ws")
        await asyncio.sleep(0.5)  # the batch that carried the fan-out may not have carried everything before it
        spans = list(collected.spans)
        output = server.output()

    # every span from the same process, described by the resource
    resource = spans[0].resource
    assert resource["service.name"] == "keel"
    assert resource["service.version"]
    assert resource["service.instance.id"]

    # the sign-up continues the client's trace, with SQL and the hash under it (the hash ran in a pool thread)
    (register,) = collected.named("POST /api/v1/users")
    assert (register.trace_id, register.parent_id) == (CLIENT_TRACE_ID, CLIENT_SPAN_ID)
    assert register.kind == 2  # SERVER
    assert register.attributes["http.request.method"] == "POST"
    assert register.attributes["http.route"] == "/api/v1/users"
    assert register.attributes["url.path"] == "/api/v1/users"
    assert register.attributes["http.response.status_code"] == 201
    under_register = children(spans, register)
    assert "password.hash" in {span.name for span in under_register}
    assert any("db.system" in s.attributes or "db.system.name" in s.attributes for s in under_register)

    (login,) = collected.named("POST /api/v1/auth/token")
    assert "password.verify" in {span.name for span in children(spans, login)}
    assert "ratelimit.check" in {span.name for span in children(spans, login)}

    # the access line of the sign-up names its server span
    access = [json.loads(line) for line in output.splitlines() if line.startswith("{") and '"keel.access"' in line]
    (register_line,) = [line for line in access if line["route"] == "/api/v1/users"]
    assert (register_line["trace_id"], register_line["span_id"]) == (register.trace_id, register.span_id)

    # the publish: a route template in the name, never the raw path; the fan-out is the publish's child
    template = "/api/v1/channels/{channel_id}/messages"  # Litestar's spelling: the name without its type
    (post,) = collected.named(f"POST {template}")
    assert post.attributes["http.route"] == template
    (publish,) = [span for span in children(spans, post) if span.name == "realtime.publish"]
    (fan_out,) = fanout
    assert (fan_out.trace_id, fan_out.parent_id) == (publish.trace_id, publish.span_id)
    assert fan_out.attributes["keel.realtime.recipients"] == 1

    # the WebSocket handshake: its own short span, named for the route, without the ticket
    (handshake,) = collected.named("GET /ws")
    assert handshake.attributes["http.response.status_code"] == 101
    assert handshake.attributes["url.path"] == "/ws"

    # no span anywhere names a raw id or carries a secret
    assert not [span.name for span in spans if channel in span.name]
    secrets = [PASSWORD, tokens["access_token"], tokens["refresh_token"], ticket, "ticket="]
    for span in spans:
        for key, value in span.attributes.items():
            assert not any(secret in str(value) for secret in secrets), (span.name, key)


def _p50(url: str, count: int = 50) -> float:
    timings = []
    with httpx.Client() as client:
        for _ in range(count):
            start = time.perf_counter()
            assert client.get(url).status_code == 200
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


@contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextmanager
def refusing() -> Iterator[int]:
    yield free_port()  # nothing listens there


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # the collector matters here, not the database
@pytest.mark.parametrize("collector", [refusing, black_hole], ids=["refusing", "silent"])
def test_a_dead_collector_slows_nothing_and_its_drops_are_counted(
    backend: Backend, tmp_path: Path, collector: Any
) -> None:
    embedded = backend
    with keel_serve(backend_env(embedded), tmp_path) as server:
        untraced = _p50(f"{server.url}/api/v1/public")

    with collector() as port:
        env = {
            **traced_env(embedded, f"http://127.0.0.1:{port}", "http/protobuf"),
            "OTEL_BSP_MAX_QUEUE_SIZE": "8",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
        }
        with keel_serve(backend_env(embedded, **env), tmp_path) as server:  # type: ignore[arg-type]
            traced = _p50(f"{server.url}/api/v1/public")
            metrics = httpx.get(f"{server.url}/metrics").text
            dropped = next(line for line in metrics.splitlines() if line.startswith("keel_spans_dropped_total"))
            assert float(dropped.split()[-1]) > 0

            start = time.monotonic()
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=15)
            assert time.monotonic() - start < 6, "shutdown waited on the dead collector"
    # generous: a loaded 2-core CI box is noisy; a blocking export would cost seconds, not milliseconds
    assert traced < max(untraced * 3, untraced + 0.02), (untraced, traced)


async def test_tracing_off_builds_nothing(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    try:
        assert telemetry.setup(Settings(OTEL_EXPORTER_OTLP_ENDPOINT=None), engine) is False
    finally:
        await engine.dispose()
    assert telemetry.tracer is None
    assert telemetry._provider is None
    assert telemetry.current_ids() is None

    # the edge passes requests through without starting anything
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"traceparent", b"00-" + b"1" * 32 + b"-")]}
    assert telemetry.start_server_span(scope) is None
    await EdgeMiddleware(app)(scope, None, send)  # type: ignore[arg-type]
    assert seen


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_go_to_the_endpoint_settings_hold_not_only_to_the_environment_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    # Settings also read a .env file, which the SDK's exporters never see: without the endpoint handed to them,
    # tracing turned on there would send to localhost:4318 (or 4317)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    with http_receiver() if protocol == "http/protobuf" else grpc_receiver() as (endpoint, collected):
        settings = Settings(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint + "/",
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_TRACES_SAMPLER_ARG="1",
        )
        try:
            assert telemetry.setup(settings, engine)
            telemetry.start_span("from.settings").end()
        finally:
            telemetry.shutdown()  # flushes
            await engine.dispose()
        assert len(collected.named("from.settings")) == 1


@pytest.mark.parametrize("name", get_args(OtelSampler))
@pytest.mark.parametrize("arg", [None, "0.25"])
def test_a_named_sampler_is_built_as_the_sdk_builds_it_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, arg: str | None
) -> None:
    # keel builds it from settings (a .env file reaches them, not the SDK): the same sampler, for every name
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if arg is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    ours = telemetry._named_sampler(Settings(_env_file=None))
    assert ours.get_description() == sampling._get_from_env_or_default().get_description()
    assert set(get_args(OtelSampler)) == set(sampling._KNOWN_SAMPLERS)  # the SDK names no other


def test_the_traces_endpoint_is_resolved_as_the_otlp_exporter_specification_says() -> None:
    def resolved(**variables: str) -> str | None:
        settings = Settings(**variables)  # type: ignore[arg-type]  # by their aliases
        protocol = settings.otel_exporter_otlp_traces_protocol or settings.otel_exporter_otlp_protocol
        return telemetry._traces_endpoint(settings, protocol)

    assert resolved() is None
    assert resolved(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318") == "http://c:4318/v1/traces"
    assert resolved(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318/base/") == "http://c:4318/base/v1/traces"
    assert resolved(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317", OTEL_EXPORTER_OTLP_PROTOCOL="grpc") == "http://c:4317"
    # the signal's own endpoint is taken as it is, and wins
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert resolved(**traces) == "http://t:1/x"
    assert resolved(**traces, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc") == "http://t:1/x"


async def test_tracing_on_builds_a_provider_and_shutdown_is_bounded(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    with black_hole() as port:
        settings = Settings(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
        try:
            assert telemetry.setup(settings, engine) is True
            assert telemetry.tracer is not None
            provider = telemetry._provider
            assert provider is not None
            assert provider.queue._thread.is_alive()  # the export thread runs from the start
            traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01".encode()  # sampled: log lines carry ids
            headers = [(b"traceparent", traceparent)]
            scope = {"type": "http", "method": "GET", "path": "/x", "headers": headers, "path_template": "/x"}
            server_span = telemetry.start_server_span(scope)
            assert server_span is not None
            ids = telemetry.current_ids()
            assert ids is not None
            assert ids[0] == CLIENT_TRACE_ID
            assert len(ids[1]) == 16
            assert ids[1] != CLIENT_SPAN_ID  # the server span's own
            server_span.close(200)
        finally:
            start = time.monotonic()
            telemetry.shutdown()
            assert time.monotonic() - start < telemetry.SHUTDOWN_TIMEOUT + 1
            await engine.dispose()
    assert telemetry.tracer is None


@pytest.mark.parametrize(("ratio", "is_sampled"), [("0", False), ("1", True)])
async def test_spans_under_an_unsampled_request_cost_nothing(tmp_path: Path, ratio: str, is_sampled: bool) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    with black_hole() as port:
        settings = Settings(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_TRACES_SAMPLER_ARG=ratio)
        try:
            telemetry.setup(settings, engine)
            scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "path_template": "/x"}
            server_span = telemetry.start_server_span(scope)
            assert server_span is not None
            assert server_span.is_recording() is is_sampled
            # keel's own child spans and the instrumentations' (they take tracers from the same provider)
            provider: Any = telemetry._provider
            instrumentation = provider.get_tracer("opentelemetry.instrumentation.redis")
            with instrumentation.start_as_current_span("GET", kind=SpanKind.CLIENT) as redis_span:
                assert redis_span.is_recording() is is_sampled
                child = telemetry.start_span("ratelimit.check")
            job = lambda: 42  # noqa: E731  # a password hash's, say, run in a pool thread
            in_thread = telemetry.traced_job("password.hash", job)
            if is_sampled:  # real children of the request's span
                assert child.is_recording()
                assert child.get_span_context().trace_id == server_span.get_span_context().trace_id
                assert in_thread is not job
            else:  # no span built at all: the request's own no-op span stands in, so logs name its trace
                assert child is server_span
                assert redis_span is server_span
                assert in_thread is job  # no span to start in the thread: it would be the request's, dropped
            assert await asyncio.to_thread(in_thread) == 42
            child.end()
            server_span.close(200)
            # the request is over: what starts now is a trace of its own, not a child of the request's
            assert telemetry.start_span("after") is not server_span
        finally:
            telemetry.shutdown()
            await engine.dispose()


async def test_the_default_sampler_keeps_its_share_of_new_traces_and_follows_callers(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keel.db")
    with black_hole() as port:
        settings = Settings(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_TRACES_SAMPLER_ARG="0.25")
        try:
            telemetry.setup(settings, engine)
            roots = [telemetry.start_span("root") for _ in range(4000)]
            assert 0.2 < sum(span.is_recording() for span in roots) / len(roots) < 0.3
            assert len({span.get_span_context().trace_id for span in roots}) == len(roots)  # each a trace of its own
            for span in roots:
                span.end()
            for flags, is_sampled in ((b"01", True), (b"00", False)):  # the caller's decision, whatever the odds
                traceparent = b"00-%s-%s-%s" % (CLIENT_TRACE_ID.encode(), CLIENT_SPAN_ID.encode(), flags)
                scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"traceparent", traceparent)]}
                server_span = telemetry.start_server_span(scope)
                assert server_span is not None
                assert server_span.is_recording() is is_sampled
                assert format(server_span.get_span_context().trace_id, "032x") == CLIENT_TRACE_ID
                server_span.close(200)
        finally:
            telemetry.shutdown()
            await engine.dispose()


def test_a_traceparent_rides_ahead_of_a_broker_message_and_comes_off_intact() -> None:
    message = json.dumps({"seq": 1, "body": "hi"}).encode()
    assert telemetry.split_traceparent(message) == (message, None)

    class FakeSpan:
        def get_span_context(self) -> Any:
            from opentelemetry.trace import SpanContext, TraceFlags

            return SpanContext(int(CLIENT_TRACE_ID, 16), int(CLIENT_SPAN_ID, 16), False, TraceFlags(1))

    data = telemetry.with_traceparent(message, FakeSpan())  # type: ignore[arg-type]
    payload, parent = telemetry.split_traceparent(data)
    assert payload == message
    assert parent == f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01".encode()
