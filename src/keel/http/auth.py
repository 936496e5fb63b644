"""Who the caller is, for every domain: who may call a handler, and the verified principal the auth middleware left.

The accounts domain verifies bearer tokens (its AuthMiddleware); what handlers of any domain need is only
the outcome, so it lives here at the shared edge: a `Principal` in `scope["auth"]`, or the reason there is
none in the scope state. A handler says who may call it with `opt=USER` or `opt=ADMIN`, and RequireCaller
refuses the others with 401/403 after the rate limiter ran, so refusals are limited too. For the rest it leaves
the caller where `current_principal()` finds it without a `request` parameter: Litestar parses every handler's
parameters on each request, which cost /protected as much as verifying its token.

Not Litestar guards: they run inside the framework's request handling, which copies the route handler for every
guard call, and /protected paid about a quarter of its throughput for them (BENCHMARKS.md).
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Final, Protocol

from litestar.types import ASGIApp, Receive, Scope, Send

from keel.errors import Forbidden, KeelError, Unauthorized
from keel.http.errors import send_error

AUTH_ERROR: Final = "auth_error"  # scope-state key: why a presented token was refused
CALLER: Final = "caller"  # opt key: who may call the handler
USER: Final = {CALLER: "user"}  # any valid bearer token
ADMIN: Final = {CALLER: "admin"}  # a valid bearer token with the admin scope
# what secured operations show in OpenAPI: a pasted bearer token, or Swagger's OAuth2 password dialog
SECURITY: Final[list[dict[str, list[str]]]] = [{"BearerAuth": []}, {"OAuth2Password": []}]


class Principal(Protocol):
    """The verified caller: accounts' token claims satisfy it."""

    @property
    def user_id(self) -> uuid.UUID: ...
    @property
    def username(self) -> str: ...
    @property
    def is_admin(self) -> bool: ...


# The caller of the request this task is handling. The ASGI server runs each request in a task of its own, which
# starts from a copy of the server's context, so a value set here never reaches another request.
_caller: ContextVar[Principal | None] = ContextVar("keel_caller", default=None)


class AuthenticationRequired(Unauthorized):
    code = "accounts.authentication_required"
    title = "Authentication required"


class AdminRequired(Forbidden):
    code = "accounts.admin_required"
    title = "Admin required"


def refusal(scope: Scope, caller: str) -> KeelError | None:
    """Why this connection may not call a handler that needs `caller` ("user" or "admin"), or None."""
    principal: Principal | None = scope.get("auth")
    if principal is None:
        error: KeelError | None = scope["state"].get(AUTH_ERROR)
        return error or AuthenticationRequired("This endpoint needs a bearer token.")
    if caller == "admin" and not principal.is_admin:
        return AdminRequired("This endpoint is for admins.")
    return None


class RequireCaller:
    """Pure ASGI, after routing and the rate limiter: 401/403 for HTTP handlers whose opt says USER or ADMIN.

    keel's WebSocket and SSE endpoints sit in front of the framework and authenticate in keel.realtime.access.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope["route_handler"].opt.get(CALLER)
        error = refusal(scope, caller) if caller is not None else None
        if error is not None:
            await send_error(send, error)
            return
        _caller.set(scope["auth"] if caller is not None else None)
        await self.app(scope, receive, send)


def current_principal() -> Principal:
    """The caller of the handler running now, which says opt=USER or opt=ADMIN."""
    principal = _caller.get()
    if principal is None:  # a handler read the caller without opt=USER: a programming error
        raise RuntimeError("the handler reads the caller but does not say opt=USER")
    return principal
