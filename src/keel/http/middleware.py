"""The edge middleware: request id, security headers, CORS, HEAD, OPTIONS' Allow, and what observes a request
(metrics, the access log, the server span) in one pure-ASGI layer with one send wrapper.

One layer, not three: each pure-ASGI layer costs a closure and an await per message (SPIKES.md). CORS is ours
rather than Litestar's CORSConfig because a refused preflight must be problem+json like every other error
(SPEC §2), and a request with an `Origin` header should cost a header lookup, not a middleware pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from random import getrandbits
from time import perf_counter_ns
from typing import Any, Final

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from keel import metrics, server_span, telemetry
from keel.http.errors import allow_value, problem_body
from keel.http.scope import caller_of, handshake_status_of, response_headers_of
from keel.logs import AccessLog
from keel.server_span import ServerSpan

REQUEST_ID_HEADER: Final = b"x-request-id"
_SANE_REQUEST_ID: Final = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")
SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
)
CORS_ALLOWED_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE"})
CORS_ALLOWED_HEADERS: Final = frozenset(
    {
        "authorization",
        "content-type",
        "x-request-id",
        "last-event-id",
        "if-none-match",
        "accept",
        "accept-language",
        "content-language",
        "x-csrf-token",  # the double-submit header of session-cookie requests (SPEC §4)
    }
)
CORS_EXPOSED_HEADERS: Final = b"X-Request-ID, RateLimit, RateLimit-Policy, Retry-After, ETag, Location"
CORS_MAX_AGE: Final = b"600"
CORS_CREDENTIALS: Final = (b"access-control-allow-credentials", b"true")


class _Exchange:
    """What the edge learns of one request while passing it on: its status, the scope the app routed (HEAD runs a
    copy, where the router leaves the route template), and its server span when tracing is on."""

    __slots__ = ("scope", "span", "status")

    def __init__(self, scope: Scope, span: ServerSpan | None) -> None:
        self.scope = scope
        self.span = span
        self.status = 500  # uvicorn's answer when the app fails or ends before it starts a response

    def route(self) -> str:
        """The route template the router matched (ids never reach a label or a log field: keel.realtime names its
        own two), or one fixed value."""
        template: str | None = self.scope.get("path_template")
        return template or metrics.UNMATCHED_ROUTE


# The request headers the edge reads, gathered in one pass (`edge_headers`): request id, CORS, trace context.
_EDGE_HEADERS: Final = frozenset(
    {REQUEST_ID_HEADER, b"origin", b"access-control-request-method", b"traceparent", b"tracestate"}
)


def edge_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Those of `headers` the edge reads (the first of each name; several `tracestate` headers joined, as W3C Trace
    Context reads them), in one pass: one set lookup a header. A scan each for the request id, `Origin` and the
    trace context took ~10 000 instructions on a five-header request, this takes ~3 500 (bench/edge_parts.py;
    BENCHMARKS.md, 2026-12-05 05:00)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _EDGE_HEADERS:
            if name not in found:
                found[name] = value
            elif name == b"tracestate":
                found[name] += b"," + value
    return found


def request_id_of(value: bytes | None) -> str:
    """The client's X-Request-ID (`value`) when it is sane (SPEC §2), else a fresh one."""
    if value is not None and _SANE_REQUEST_ID.match(value):
        return value.decode("ascii")
    # 128 random bits in hex as uuid4().hex has them, without its 2.9 µs: no UUID object, and no os.urandom, which
    # releases the GIL and so hands the event loop to the span exporter's thread in mid-request. Unique, not secret.
    # to_bytes().hex(): a third fewer instructions than f"{:032x}", the same text.
    return getrandbits(128).to_bytes(16, "big").hex()


class EdgeMiddleware:
    """Adds X-Request-ID and security headers to every response, answers CORS for configured origins, counts every
    request in the metrics, and writes one access-log line per request and per WebSocket (`access_log`, None when
    the level is above info).

    `client_ip(peer, headers)` names the client by the trusted-proxy rule, for the log line. `methods` maps each
    route template to the methods its route answers, for the `Allow` of an OPTIONS answer.
    """

    def __init__(
        self,
        app: ASGIApp,
        cors_origins: Iterable[str] = (),
        *,
        access_log: AccessLog | None = None,
        client_ip: Callable[[str | None, Any], str] | None = None,
        methods: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.app = app
        self.allow = {route: allow_value(answered).encode() for route, answered in (methods or {}).items()}
        origins = tuple(cors_origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(origin.encode("latin-1") for origin in origins if origin != "*")
        self.access_log = access_log
        self.client_ip = client_ip or (lambda peer, _: peer or "unknown")
        # bounded: only configured origins (or "*", or None) ever reach it, see _allowed
        self._static: dict[bytes | None, tuple[tuple[bytes, bytes], ...]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        found = edge_headers(headers)
        request_id = request_id_of(found.get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] != ScopeType.HTTP:
            if self.access_log is None or scope["type"] != ScopeType.WEBSOCKET:
                await self.app(scope, receive, send)
                return
            await self._websocket(scope, receive, send, request_id)
            return

        origin = found.get(b"origin")
        allowed_origin = self._allowed(origin)
        if origin is not None and scope["method"] == "OPTIONS" and b"access-control-request-method" in found:
            await self._preflight(scope, send, request_id, origin, allowed_origin)
            return

        # observed (SPEC §9): every request the app answers, /metrics and the probes included (the preflights above
        # are the edge's own); WebSockets are not wrapped, so their frames keep the direct path to the transport
        started = perf_counter_ns()  # in ns: integer arithmetic for the access line and the metrics, not float's
        tracer = telemetry.tracer  # no span unless tracing is on
        exchange = _Exchange(scope, None if tracer is None else server_span.start(tracer, scope, found))
        try:
            if scope["method"] == "HEAD":
                await self._head(scope, receive, send, request_id, allowed_origin, exchange)
            else:
                send_on = self._with_headers(send, request_id, allowed_origin, exchange)
                if scope["method"] == "OPTIONS":
                    send_on = self._with_allow(send_on, scope)
                await self.app(scope, receive, send_on)
        except BaseException as exc:
            if exchange.span is not None:
                exchange.span.finish(exc)
            raise
        finally:
            elapsed, route = perf_counter_ns() - started, exchange.route()
            metrics.observe_request(scope["method"], route, exchange.status, elapsed)
            if self.access_log is not None:
                ids = exchange.span.ids() if exchange.span is not None else None
                self._log(exchange.scope, scope["method"], route, exchange.status, elapsed, request_id, ids)
            if exchange.span is not None:
                exchange.span.close()  # ended already if the app failed: then it only leaves

    def _with_headers(self, send: Send, request_id: str, allowed_origin: bytes | None, exchange: _Exchange) -> Send:
        static = self._static_headers(allowed_origin)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"] = [
                    *message.get("headers", ()),
                    (REQUEST_ID_HEADER, request_id.encode("ascii")),
                    *static,
                    *(response_headers_of(exchange.scope) or ()),  # the rate limiter's, when it ran
                ]
                exchange.status = message["status"]
                if exchange.span is not None:
                    exchange.span.response_started(exchange.status, headers)
            await send(message)

        return send_with_headers

    def _static_headers(self, allowed_origin: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
        """The headers every response for this origin gets besides its request id, built once per origin: a
        configured origin is one of a few, and "*" or None are one each (bench/stack_cpu.py, 2026-12-04)."""
        if (known := self._static.get(allowed_origin)) is not None:
            return known
        extra = list(SECURITY_HEADERS)
        if allowed_origin is not None:
            extra += [
                (b"access-control-allow-origin", allowed_origin),
                (b"access-control-expose-headers", CORS_EXPOSED_HEADERS),
            ]
            if allowed_origin != b"*":  # a listed origin may send the session cookie; "*" never with credentials
                extra.append(CORS_CREDENTIALS)
        if self.origins:
            extra.append((b"vary", b"Origin"))
        self._static[allowed_origin] = built = tuple(extra)
        return built

    def _with_allow(self, send: Send, scope: Scope) -> Send:
        """Litestar's own OPTIONS answer lists the methods of the handlers first registered at a path, not those
        added later (a v2 list beside a create, DELETE beside POST); the edge writes the route's whole list."""

        async def send_with_allow(message: Message) -> None:
            allow = self.allow.get(scope.get("path_template") or "")
            if message["type"] == "http.response.start" and allow is not None:
                headers = message.get("headers", ())
                if any(name.lower() == b"allow" for name, _ in headers):
                    message["headers"] = [(n, v) for n, v in headers if n.lower() != b"allow"] + [(b"allow", allow)]
            await send(message)

        return send_with_allow

    async def _head(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        allowed_origin: bytes | None,
        exchange: _Exchange,
    ) -> None:
        """HEAD wherever GET works (RFC 9110 §9.3.2): the GET runs, its status and headers are sent, its body is not.

        The app sees a GET (a copy of the scope: the handlers, compression and ETags then answer exactly as they
        would), so Content-Length and Content-Encoding are the GET's. The response ends with its head, which also
        tells a streaming app that the client is gone (a server's `receive` then says `http.disconnect`), so HEAD
        on an event stream answers at once instead of streaming into the void.
        """
        send_head = self._with_headers(send, request_id, allowed_origin, exchange)
        done = False

        async def send_without_body(message: Message) -> None:
            nonlocal done
            if done:
                return
            if message["type"] == "http.response.start":
                await send_head(message)
                await send(HTTPResponseBodyEvent(type="http.response.body", body=b"", more_body=False))
                done = True

        exchange.scope = {**scope, "method": "GET"}  # type: ignore[assignment]
        if exchange.span is not None:
            exchange.span.follow(exchange.scope)
        await self.app(exchange.scope, receive, send_without_body)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """A WebSocket, logged when it ends: 101 if it was accepted, else its refusal's status.

        `send` is passed on as it came: fan-out writes frames straight to the server's own transport when `send` is
        uvicorn's (keel.realtime.websocket), so the endpoint records the handshake's outcome in the scope instead.
        """
        started = perf_counter_ns()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("path_template") or metrics.UNMATCHED_ROUTE
            ids = telemetry.current_ids()
            status = handshake_status_of(scope) or 403
            self._log(scope, "GET", route, status, perf_counter_ns() - started, request_id, ids)

    def _log(
        self,
        scope: Scope,
        method: str,
        route: str,
        status: int,
        elapsed: int,
        request_id: str,
        ids: tuple[str, str] | None,
    ) -> None:
        """The request's access line (`elapsed` in ns), called with positional arguments: ten keywords cost ~500
        instructions."""
        assert self.access_log is not None
        client = scope.get("client")  # optional in ASGI
        claims = caller_of(scope)
        trace_id, span_id = ids or (None, None)
        self.access_log.request(
            method,
            route,
            scope["path"],
            status,
            elapsed,
            request_id,
            None if claims is None else claims.subject,
            self.client_ip(client[0] if client else None, scope["headers"]),
            trace_id,
            span_id,
        )

    def _allowed(self, origin: bytes | None) -> bytes | None:
        if origin is None:
            return None
        if self.any_origin:
            return b"*"
        return origin if origin in self.origins else None

    async def _preflight(
        self, scope: Scope, send: Send, request_id: str, origin: bytes, allowed_origin: bytes | None
    ) -> None:
        requested = _header(scope["headers"], b"access-control-request-headers") or b""
        names = {name.strip().lower() for name in requested.decode("latin-1").split(",") if name.strip()}
        method = (_header(scope["headers"], b"access-control-request-method") or b"").upper()
        headers = [(REQUEST_ID_HEADER, request_id.encode("ascii")), *SECURITY_HEADERS, (b"vary", b"Origin")]
        if allowed_origin is None or method not in CORS_ALLOWED_METHODS or not names <= CORS_ALLOWED_HEADERS:
            reason = (
                "origin not allowed"
                if allowed_origin is None
                else "method not allowed"
                if method not in CORS_ALLOWED_METHODS
                else "header not allowed"
            )
            body = problem_body(403, code="http.cors_rejected", detail=f"CORS preflight refused: {reason}.")
            headers += [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
            await send(HTTPResponseStartEvent(type="http.response.start", status=403, headers=headers))
            await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))
            return
        headers += [
            (b"access-control-allow-origin", allowed_origin),
            (b"access-control-allow-methods", b", ".join(sorted(CORS_ALLOWED_METHODS))),
            (b"access-control-allow-headers", ", ".join(sorted(CORS_ALLOWED_HEADERS)).encode()),
            (b"access-control-max-age", CORS_MAX_AGE),
            (b"content-length", b"0"),
        ]
        if allowed_origin != b"*":
            headers.append(CORS_CREDENTIALS)
        await send(HTTPResponseStartEvent(type="http.response.start", status=204, headers=headers))
        await send(HTTPResponseBodyEvent(type="http.response.body", body=b"", more_body=False))


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    return next((value for name, value in headers if name == wanted), None)
