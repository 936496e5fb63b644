"""Auth for HTTP: a pure-ASGI middleware that verifies the bearer token once, login admission, and providers.

The middleware only verifies: the claims of a valid token land in `scope["auth"]` (where handlers and the rate
limiter read them without verifying again), and a bad token's error waits in the scope state. keel.http.auth's
RequireCaller then answers 401/403 for the handlers that need a caller. Splitting the two lets the rate limiter
run in between, so refused requests are limited too (a token-guessing client included).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from litestar.di import NamedDependency
from litestar.types import ASGIApp, Receive, Scope, Send

from keel.accounts.errors import InvalidToken, PasswordPoolBusy
from keel.accounts.passwords import PasswordHasher
from keel.accounts.service import Sessions
from keel.accounts.tokens import Claims
from keel.accounts.verifier import TokenVerifier
from keel.errors import BadRequest
from keel.http.auth import AUTH_ERROR, current_principal
from keel.http.deps import from_state
from keel.http.errors import send_error

REFUSAL_PACE: Final = 1.0  # seconds a refusal for a saturated hasher is held before it is sent
HASHES_PASSWORD: Final = "hashes_password"  # noqa: S105 (an opt key): handlers that wait for the password hasher


class AmbiguousCredentials(BadRequest):
    code = "http.ambiguous_credentials"
    title = "Ambiguous credentials"


def bearer_token(headers: list[tuple[bytes, bytes]] | Any) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), or None.

    Two `Authorization` headers are refused (AmbiguousCredentials, 400) rather than one of them silently chosen:
    a proxy or client library that adds its own next to the caller's would otherwise decide who the caller is.
    """
    found: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                raise AmbiguousCredentials("Send one Authorization header, not several.")
            found = value
    if found is None:
        return None
    scheme, _, token = found.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip().decode("latin-1")


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            token = bearer_token(scope["headers"])
        except AmbiguousCredentials as error:
            await send_error(send, error)
            return
        claims: Claims | None = None
        if token is not None:
            verifier: TokenVerifier = scope["litestar_app"].state.verifier
            try:
                if not token:
                    raise InvalidToken("The bearer token is empty.")
                claims = verifier.verify(token)
            except InvalidToken as error:
                scope["state"][AUTH_ERROR] = error
        scope["auth"] = claims
        scope["user"] = claims
        await self.app(scope, receive, send)


class PasswordAdmission:
    """Pure ASGI, after the rate limiter: 503 `accounts.busy` for a handler that hashes a password while the
    hasher has no place, before the framework parses the body or opens a database session.

    During a login flood most logins are refused; refused here, each costs a dictionary lookup and two sends
    instead of a form parse, a session and an exception, and the event loop stays free for everyone else.

    The refusal is held REFUSAL_PACE seconds before it is sent. A client that honours Retry-After loses nothing
    (it would wait longer anyway), but one that sends again the moment it is answered, as a flood does, is paced
    to one request a second per connection instead of thousands: answered at once, 200 such connections kept a
    one-core event loop busy with nothing but refusals, and every other request queued behind them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["route_handler"].opt.get(HASHES_PASSWORD):
            hasher: PasswordHasher = scope["litestar_app"].state.hasher
            try:
                hasher.admit()
            except PasswordPoolBusy as busy:
                await asyncio.sleep(REFUSAL_PACE)
                await send_error(send, busy)
                return
        await self.app(scope, receive, send)


def current_claims() -> Claims:
    """The whole token claims (session id included) of a handler with opt=USER: accounts' own view."""
    principal = current_principal()
    assert isinstance(principal, Claims)  # the only principal AuthMiddleware ever sets
    return principal


Hasher = NamedDependency[PasswordHasher]
SessionPolicy = NamedDependency[Sessions]

DEPENDENCIES: Final = {
    "hasher": from_state("hasher"),
    "sessions": from_state("sessions"),
}
