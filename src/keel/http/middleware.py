"""The edge middleware: request id, security headers, CORS and HEAD in one pure-ASGI layer with one send wrapper.

One layer, not three: each pure-ASGI layer costs a closure and an await per message (SPIKES.md). CORS is ours
rather than Litestar's CORSConfig because a refused preflight must be problem+json like every other error
(SPEC §2), and a request with an `Origin` header should cost a header lookup, not a middleware pass.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Final

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

from keel import telemetry
from keel.http.errors import problem_body

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
    }
)
CORS_EXPOSED_HEADERS: Final = b"X-Request-ID, RateLimit, RateLimit-Policy, Retry-After, ETag, Location"
CORS_MAX_AGE: Final = b"600"


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is sane (SPEC §2), else a fresh one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.match(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class EdgeMiddleware:
    """Adds X-Request-ID and security headers to every response, and answers CORS for configured origins."""

    def __init__(self, app: ASGIApp, cors_origins: Iterable[str] = ()) -> None:
        self.app = app
        origins = tuple(cors_origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(origin.encode("latin-1") for origin in origins if origin != "*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        request_id = request_id_of(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return

        origin = next((value for name, value in headers if name == b"origin"), None)
        allowed_origin = self._allowed(origin)
        if origin is not None and scope["method"] == "OPTIONS" and _header(headers, b"access-control-request-method"):
            await self._preflight(scope, send, request_id, origin, allowed_origin)
            return

        span = telemetry.start_server_span(scope)  # None unless tracing is on
        try:
            if scope["method"] == "HEAD":
                await self._head(scope, receive, send, request_id, allowed_origin, span)
            else:
                await self.app(scope, receive, self._with_headers(send, request_id, allowed_origin, span))
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            raise
        finally:
            if span is not None:
                span.end()
                span.detach()

    def _with_headers(
        self, send: Send, request_id: str, allowed_origin: bytes | None, span: telemetry.ServerSpan | None = None
    ) -> Send:
        extra = [(REQUEST_ID_HEADER, request_id.encode("ascii")), *SECURITY_HEADERS]
        if allowed_origin is not None:
            extra += [
                (b"access-control-allow-origin", allowed_origin),
                (b"access-control-expose-headers", CORS_EXPOSED_HEADERS),
            ]
        if self.origins:
            extra.append((b"vary", b"Origin"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"] = [*message.get("headers", ()), *extra]
                if span is not None:
                    span.response_started(message["status"], headers)
            await send(message)

        return send_with_headers

    async def _head(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        allowed_origin: bytes | None,
        span: telemetry.ServerSpan | None,
    ) -> None:
        """HEAD wherever GET works (RFC 9110 §9.3.2): the GET runs, its status and headers are sent, its body is not.

        The app sees a GET (a copy of the scope: the handlers, compression and ETags then answer exactly as they
        would), so Content-Length and Content-Encoding are the GET's. The response ends with its head, which also
        tells a streaming app that the client is gone (a server's `receive` then says `http.disconnect`), so HEAD
        on an event stream answers at once instead of streaming into the void.
        """
        send_head = self._with_headers(send, request_id, allowed_origin, span)
        done = False

        async def send_without_body(message: Message) -> None:
            nonlocal done
            if done:
                return
            if message["type"] == "http.response.start":
                await send_head(message)
                await send(HTTPResponseBodyEvent(type="http.response.body", body=b"", more_body=False))
                done = True

        get_scope = {**scope, "method": "GET"}
        if span is not None:
            span.scope = get_scope  # where the router leaves the route template
        await self.app(get_scope, receive, send_without_body)  # type: ignore[arg-type]

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
        await send(HTTPResponseStartEvent(type="http.response.start", status=204, headers=headers))
        await send(HTTPResponseBodyEvent(type="http.response.body", body=b"", more_body=False))


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    return next((value for name, value in headers if name == wanted), None)
