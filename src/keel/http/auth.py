"""Who the caller is, for every domain: guards and the verified principal the auth middleware left in the scope.

The accounts domain verifies bearer tokens (its AuthMiddleware); what handlers of any domain need is only
the outcome, so it lives here at the shared edge: a `Principal` in `scope["auth"]`, or the reason there is
none in the scope state, and the USER / ADMIN guards that refuse accordingly (after the rate limiter ran).
"""

from __future__ import annotations

import uuid
from typing import Any, Final, Protocol

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from keel.errors import Forbidden, KeelError, Unauthorized

AUTH_ERROR: Final = "auth_error"  # scope-state key: why a presented token was refused
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


class AuthenticationRequired(Unauthorized):
    code = "accounts.authentication_required"
    title = "Authentication required"


class AdminRequired(Forbidden):
    code = "accounts.admin_required"
    title = "Admin required"


# async on purpose: Litestar runs a sync guard in a worker thread, a thread hop on every guarded request
async def require_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a valid bearer token, else 401 (invalid_token when a bad one came)."""
    if connection.scope.get("auth") is None:
        error: KeelError | None = connection.scope["state"].get(AUTH_ERROR)
        raise error or AuthenticationRequired("This endpoint needs a bearer token.")


async def require_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: a valid bearer token with the admin scope, else 401/403."""
    await require_user(connection, handler)
    principal: Principal = connection.scope["auth"]
    if not principal.is_admin:
        raise AdminRequired("This endpoint is for admins.")


USER: Final = [require_user]
ADMIN: Final = [require_admin]


def current_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller of a handler guarded by USER or ADMIN."""
    principal: Principal | None = request.scope.get("auth")
    if principal is None:  # a handler read the caller without the USER guard: a programming error
        raise RuntimeError(f"{request.scope['path']}: handler reads the caller but is not guarded by USER")
    return principal
