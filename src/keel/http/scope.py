"""What keel keeps in an ASGI scope, behind typed accessors: the only module that knows the keys.

The auth middleware (keel.http.auth) and realtime's admission (keel.realtime.access) write the caller; the rate
limiter and RequireCaller read it. A key nothing reads does not belong here.
"""

from __future__ import annotations

from typing import Final

from litestar.types import Scope

from keel.errors import KeelError
from keel.identity.tokens import Claims

_AUTH_ERROR: Final = "keel.auth_error"  # scope-state key: why a presented token was refused
_HANDSHAKE_STATUS: Final = "keel.handshake_status"  # scope-state key: how a WebSocket handshake was answered
_SET_COOKIES: Final = "keel.set_cookies"  # scope-state key: a renewed session's cookies, for /ws and /events
_RESPONSE_HEADERS: Final = "keel.response_headers"  # scope-state key: headers an inner layer adds to the response


def caller_of(scope: Scope) -> Claims | None:
    """The verified claims of the connection's bearer token or ticket, or None (anonymous, or refused)."""
    claims: Claims | None = scope.get("auth")
    return claims


def set_caller(scope: Scope, claims: Claims | None) -> None:
    # ASGI's own slot for it (asgiref's AuthenticationMiddleware sets scope["user"] from it; nothing here does)
    scope["auth"] = claims


def auth_error_of(scope: Scope) -> KeelError | None:
    """Why the token the connection presented was refused, if it presented one that was."""
    error: KeelError | None = scope["state"].get(_AUTH_ERROR)
    return error


def set_auth_error(scope: Scope, error: KeelError) -> None:
    scope["state"][_AUTH_ERROR] = error


def handshake_status_of(scope: Scope) -> int | None:
    """How the WebSocket's handshake was answered (101 when accepted), for the access log; None if it never was."""
    status: int | None = scope["state"].get(_HANDSHAKE_STATUS)
    return status


def set_handshake_status(scope: Scope, status: int) -> None:
    scope["state"][_HANDSHAKE_STATUS] = status


def set_cookies_of(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The `Set-Cookie` headers a renewed browser session needs on this connection's response (/ws, /events)."""
    headers: list[tuple[bytes, bytes]] = scope["state"].get(_SET_COOKIES, [])
    return headers


def set_set_cookies(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    scope["state"][_SET_COOKIES] = headers


def response_headers_of(scope: Scope) -> list[tuple[bytes, bytes]] | None:
    """Headers inner layers asked for on this request's response (the rate limiter's), which the edge middleware
    writes in its one send wrapper: one closure and one await per message fewer than a wrapper of their own."""
    headers: list[tuple[bytes, bytes]] | None = scope["state"].get(_RESPONSE_HEADERS)
    return headers


def add_response_headers(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    """Put `headers` on the response of this request, whoever starts it (keel.http.middleware.EdgeMiddleware)."""
    state = scope["state"]
    if (added := state.get(_RESPONSE_HEADERS)) is None:
        state[_RESPONSE_HEADERS] = headers
    else:
        added += headers
