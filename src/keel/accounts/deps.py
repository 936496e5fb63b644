"""Auth for HTTP: a pure-ASGI middleware that verifies the bearer token once, and the providers accounts needs.

Handlers declare what they need with `opt={"auth": "user"}` or `"admin"`; the middleware answers 401/403 for
them. For every request that carries a valid token, the claims land in `scope["auth"]`, where handlers and the
rate limiter read them without verifying again.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.types import ASGIApp, Receive, Scope, Send

from keel.accounts.errors import AdminRequired, AuthenticationRequired, InvalidToken
from keel.accounts.passwords import PasswordHasher
from keel.accounts.service import Sessions
from keel.accounts.tokens import Claims
from keel.accounts.verifier import TokenVerifier

AUTH: Final = "auth"
Requirement = Literal["user", "admin"]
# what secured operations show in OpenAPI: a pasted bearer token, or Swagger's OAuth2 password dialog
SECURITY: Final[list[dict[str, list[str]]]] = [{"BearerAuth": []}, {"OAuth2Password": []}]
USER: Final[dict[str, Requirement]] = {AUTH: "user"}
ADMIN: Final[dict[str, Requirement]] = {AUTH: "admin"}


def bearer_token(headers: list[tuple[bytes, bytes]] | Any) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            return token.strip().decode("latin-1")
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        need: Requirement | None = handler.opt.get(AUTH) if handler is not None else None
        token = bearer_token(scope["headers"])
        claims: Claims | None = None
        if token is not None:
            verifier: TokenVerifier = scope["litestar_app"].state.verifier
            try:
                claims = verifier.verify(token) if token else None
            except InvalidToken:
                if need is not None:
                    raise
            if claims is None and need is not None:
                raise InvalidToken("The bearer token is empty.")
        if need is not None:
            if claims is None:
                raise AuthenticationRequired("This endpoint needs a bearer token.")
            if need == "admin" and not claims.is_admin:
                raise AdminRequired("This endpoint is for admins.")
        scope["auth"] = claims
        scope["user"] = claims
        await self.app(scope, receive, send)


def current_claims(request: Request[Any, Any, Any]) -> Claims:
    """The verified claims of a handler marked USER or ADMIN (the middleware has already refused the others)."""
    claims: Claims | None = request.scope.get("auth")
    if claims is None:  # a handler read claims without declaring opt=USER: a programming error, not a client's
        raise RuntimeError(f"{request.scope['path']}: handler reads claims but is not marked opt=USER")
    return claims


def provide_hasher(state: State) -> PasswordHasher:
    hasher: PasswordHasher = state.hasher
    return hasher


def provide_sessions(state: State) -> Sessions:
    sessions: Sessions = state.sessions
    return sessions


Hasher = NamedDependency[PasswordHasher]
SessionPolicy = NamedDependency[Sessions]

DEPENDENCIES: Final = {
    "hasher": Provide(provide_hasher, sync_to_thread=False),
    "sessions": Provide(provide_sessions, sync_to_thread=False),
}
