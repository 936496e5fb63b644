"""Who the caller is, for HTTP: the middleware that verifies a bearer token once, and who may call a handler.

AuthMiddleware only verifies: the claims of a valid token land in the scope (keel.http.scope), where handlers
and the rate limiter read them without verifying again, and a bad token's error waits there too. A handler says
who may call it with `opt=USER` or `opt=ADMIN`, and RequireCaller refuses the others with 401/403 after the
rate limiter ran, so refusals are limited too (a token-guessing client included). For the rest it leaves the
caller where `current_principal()` finds it without a `request` parameter: Litestar parses every handler's
parameters on each request, which cost /protected as much as verifying its token.

Not Litestar guards: they run inside the framework's request handling, which copies the route handler for every
guard call, and /protected paid about a quarter of its throughput for them (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Final

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from keel.errors import BadRequest, Forbidden, KeelError
from keel.http.errors import send_error
from keel.http.scope import auth_error_of, caller_of, set_auth_error, set_caller
from keel.http.sessions import UNSAFE_METHODS, SessionCookies, check_csrf
from keel.identity.errors import AuthenticationRequired, InvalidToken
from keel.identity.tokens import Claims
from keel.identity.verifier import TokenVerifier

CALLER: Final = "caller"  # opt key: who may call the handler
USER: Final = {CALLER: "user"}  # any valid bearer token or session cookie
ADMIN: Final = {CALLER: "admin"}  # a valid bearer token or session cookie with the admin scope
# what secured operations show in OpenAPI: a pasted bearer token, Swagger's OAuth2 password dialog, or a browser
# session's cookie (POST /auth/session; unsafe methods then need X-CSRF-Token too)
SECURITY: Final[list[dict[str, list[str]]]] = [{"BearerAuth": []}, {"OAuth2Password": []}, {"SessionCookie": []}]

# The caller of the request this task is handling. The ASGI server runs each request in a task of its own, which
# starts from a copy of the server's context, so a value set here never reaches another request.
_caller: ContextVar[Claims | None] = ContextVar("keel_caller", default=None)


class AmbiguousCredentials(BadRequest):
    code = "http.ambiguous_credentials"
    title = "Ambiguous credentials"


class AdminRequired(Forbidden):
    code = "accounts.admin_required"
    title = "Admin required"


def credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bytes | None]:
    """The bearer token (RFC 6750 §2.1) and the `Cookie` header of a request, in one pass over its headers.

    Two `Authorization` headers are refused (AmbiguousCredentials, 400) rather than one of them silently chosen:
    a proxy or client library that adds its own next to the caller's would otherwise decide who the caller is.
    """
    found: bytes | None = None
    cookie: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                raise AmbiguousCredentials("Send one Authorization header, not several.")
            found = value
        elif name == b"cookie":
            cookie = value if cookie is None else cookie + b"; " + value  # HTTP/2 may split it (RFC 9113 §8.2.3)
    if found is None:
        return None, cookie
    scheme, _, token = found.partition(b" ")
    if scheme.lower() != b"bearer":
        return None, cookie
    return token.strip().decode("latin-1"), cookie


class AuthMiddleware:
    """Pure ASGI, before the rate limiter: verify the bearer token or else the session cookie, if any, and leave the
    outcome in the scope. With both, the bearer decides (SPEC §4). A renewed session's cookies go on the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            token, cookie = credentials(scope["headers"])
        except AmbiguousCredentials as error:
            await send_error(send, error)
            return
        claims: Claims | None = None
        if token is not None:
            # state["verifier"], not state.verifier: Litestar's State answers an attribute from __getattr__, after
            # the normal lookup has failed, ~4 400 instructions a read against a few hundred (bench/edge_parts.py)
            verifier: TokenVerifier = scope["litestar_app"].state["verifier"]
            try:
                if not token:
                    raise InvalidToken("The bearer token is empty.")
                claims = verifier.verify(token)
            except InvalidToken as error:
                set_auth_error(scope, error)
        elif cookie is not None:
            sessions: SessionCookies = scope["litestar_app"].state["session_cookies"]
            claims = sessions.fresh(cookie)
            if claims is None and (session := await sessions.authenticate(cookie)) is not None:  # renew or refuse
                claims = session.claims
                if session.error is not None:
                    set_auth_error(scope, session.error)
                if session.set_cookies:
                    send = _with_cookies(send, session.set_cookies)
        set_caller(scope, claims)
        await self.app(scope, receive, send)


def _with_cookies(send: Send, cookies: list[tuple[bytes, bytes]]) -> Send:
    async def send_with_cookies(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *cookies]
        await send(message)

    return send_with_cookies


def refusal(scope: Scope, caller: str) -> KeelError | None:
    """Why this connection may not call a handler that needs `caller` ("user" or "admin"), or None."""
    claims = caller_of(scope)
    if claims is None:
        return auth_error_of(scope) or AuthenticationRequired("This endpoint needs a bearer token.")
    if caller == "admin" and not claims.is_admin:
        return AdminRequired("This endpoint is for admins.")
    return None


class RequireCaller:
    """Pure ASGI, after routing and the rate limiter: 401/403 for HTTP handlers whose opt says USER or ADMIN, and
    403 `http.csrf_failed` for an unsafe method whose caller a session cookie named without X-CSRF-Token.

    keel's WebSocket and SSE endpoints sit in front of the framework and authenticate in keel.realtime.access.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope["route_handler"].opt.get(CALLER)
        if caller is None:
            _caller.set(None)
        else:
            error = refusal(scope, caller)
            # a session cookie named the caller of an unsafe method: a page on another site could have sent it
            if error is None and scope.get("method") in UNSAFE_METHODS:
                error = _csrf_refusal(scope["headers"])
            if error is not None:
                await send_error(send, error)
                return
            _caller.set(caller_of(scope))
        await self.app(scope, receive, send)


def _csrf_refusal(headers: Iterable[tuple[bytes, bytes]]) -> KeelError | None:
    """Why an unsafe request with a caller fails the CSRF check, or None; the check applies when the session cookie
    named the caller, that is when no bearer token came with it (the bearer decides, as in AuthMiddleware).

    Found again from the headers rather than marked in the scope by AuthMiddleware: a mark would cost every
    cookie-authenticated read a scope write, to serve only the writes, which pay for this pass."""
    token, cookie = credentials(headers)
    return check_csrf(cookie, headers) if token is None and cookie is not None else None


def current_principal() -> Claims:
    """The verified claims of the caller of the handler running now, which says opt=USER or opt=ADMIN."""
    claims = _caller.get()
    if claims is None:  # a handler read the caller without opt=USER: a programming error
        raise RuntimeError("the handler reads the caller but does not say opt=USER")
    return claims
