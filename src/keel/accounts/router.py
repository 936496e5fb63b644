"""Accounts endpoints (SPEC §4); the versioned routers mount these controllers under /api/v1 and /api/v2."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import CacheControlHeader, Cookie, State
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from keel.accounts import service
from keel.accounts.deps import HASHES_PASSWORD, Hasher, SessionPolicy
from keel.accounts.recovery_router import RecoveryController
from keel.accounts.schemas import (
    PasswordChange,
    ProtectedMessage,
    PublicMessage,
    RefreshRequest,
    TokenPair,
    TokenRequest,
    UserCreate,
    UserRead,
)
from keel.http.auth import ADMIN, SECURITY, USER, current_principal
from keel.http.caching import NOT_MODIFIED, VALIDATOR_HEADERS
from keel.http.deps import ConditionalReads, DbSession
from keel.http.errors import body_error, problem_response
from keel.http.idempotency import IDEMPOTENT, Idempotent
from keel.http.pagination import Cursor, Limit, Offset, Page, decode_cursor, encode_cursor
from keel.http.requests import ACCEPTS, RATE_LIMIT
from keel.http.sessions import CSRF_COOKIE, REFRESH_COOKIE, SESSION_COOKIE, SessionCookies
from keel.http.validation import struct_errors
from keel.idempotency.service import Claim
from keel.identity.tokens import Keyring
from keel.types import NO_NUL

FORM = RequestEncodingType.URL_ENCODED.value
JSON = RequestEncodingType.JSON.value
REGISTER: Final = "POST /users"  # the idempotency operation of a sign-up (scoped by client address)
BUSY = {503: problem_response("Too many passwords are being hashed; retry after Retry-After seconds")}


class PublicController(Controller):
    path = "/public"
    tags = ["auth"]

    @get(summary="Read the public greeting", sync_to_thread=False)
    def public(self) -> PublicMessage:
        """A greeting anyone may read: no auth."""
        return PublicMessage(message="Hello from keel. This endpoint needs no token.")


class ProtectedController(Controller):
    path = "/protected"
    tags = ["auth"]
    opt = USER
    security = SECURITY

    @get(summary="Read the greeting for a signed-in caller", sync_to_thread=False)
    def protected(self) -> ProtectedMessage:
        """A greeting for the bearer of a valid access token."""
        claims = current_principal()
        return ProtectedMessage(message=f"Hello, {claims.username}.", user_id=claims.user_id, username=claims.username)


class UsersController(Controller):
    path = "/users"
    tags = ["users"]

    @post(
        summary="Register a user",
        status_code=201,
        opt={HASHES_PASSWORD: True, IDEMPOTENT: REGISTER},
        responses={409: problem_response("The username or email is taken"), **BUSY},
    )
    async def register(
        self, data: JSONBody[UserCreate], db_session: DbSession, hasher: Hasher, idempotency: Idempotent
    ) -> Response[UserRead]:
        """Create an account. The username and the email must both be free (compared case-insensitively); the
        password is hashed with Argon2id and never stored or returned."""

        async def register(claim: Claim | None) -> UserRead:
            user = await service.register(
                db_session,
                hasher,
                username=data.username,
                email=data.email,
                password=data.password,
                idempotency=claim,
            )
            return UserRead.from_model(user)

        return await idempotency.run(db_session, register, data=data)

    @get(
        "/me",
        summary="Get the current user",
        opt=USER,
        security=SECURITY,
        responses=NOT_MODIFIED,
        response_headers=VALIDATOR_HEADERS,
    )
    async def me(self, reads: ConditionalReads) -> Response[UserRead]:
        """The account of the token's bearer, with an ETag (If-None-Match gives 304)."""
        user_id = current_principal().user_id

        async def load(db_session: AsyncSession) -> UserRead:
            return UserRead.from_model(await service.get_user(db_session, user_id))

        # the hottest per-user read (every client polls it): from the read cache while no write changed the account,
        # so a hit costs no database work (issue 16: ~1 ms of SQLAlchemy + asyncpg CPU per miss on PostgreSQL)
        return await reads.json(load, scope=service.user_scope(user_id), key="me")

    @post(
        "/me/password",
        summary="Change the password",
        status_code=204,
        # it checks a password: without the auth policy a stolen access token could guess current_password
        opt={**USER, RATE_LIMIT: "auth", HASHES_PASSWORD: True},
        security=SECURITY,
        responses={403: problem_response("The current password is wrong"), **BUSY},
    )
    async def change_password(
        self,
        data: JSONBody[PasswordChange],
        db_session: DbSession,
        hasher: Hasher,
        sessions: SessionPolicy,
    ) -> None:
        """Change the password; every other session of this account ends."""
        await service.change_password(
            db_session,
            hasher,
            sessions,
            claims=current_principal(),
            current_password=data.current_password,
            new_password=data.new_password,
        )


class UserListV1(Controller):
    path = "/users"
    tags = ["users"]
    opt = ADMIN
    security = SECURITY

    @get(summary="List users")
    async def list_users(self, db_session: DbSession, limit: Limit = 50, offset: Offset = 0) -> list[UserRead]:
        """Every account, in sign-up order (admins only)."""
        users = await service.list_users(db_session, limit=limit, offset=offset)
        return [UserRead.from_model(user) for user in users]


class UserListV2(Controller):
    path = "/users"
    tags = ["users"]
    opt = ADMIN
    security = SECURITY

    @get(summary="List users")
    async def list_users(self, db_session: DbSession, limit: Limit = 50, cursor: Cursor = None) -> Page[UserRead]:
        """Every account, in sign-up order, a page at a time (admins only)."""
        after: tuple[datetime, uuid.UUID] | None = decode_cursor(cursor, tuple[datetime, uuid.UUID]) if cursor else None
        users = await service.list_users(db_session, limit=limit, after=after)
        last = users[-1] if len(users) == limit else None
        return Page(
            [UserRead.from_model(u) for u in users], encode_cursor((last.created_at, last.id)) if last else None
        )


@dataclass
class TokenOperation(Operation):
    """Documents the token endpoint's body as the OAuth2 form (what Swagger's Authorize dialog sends)."""

    def __post_init__(self) -> None:
        # TokenRequest's fields (tests/http/test_openapi.py compares them); unknown members are ignored, as RFC 6749
        # §3.2 asks of a token endpoint, so no additionalProperties: false here
        form = Schema(
            type=OpenAPIType.OBJECT,
            required=["username", "password"],
            properties={
                "grant_type": Schema(type=OpenAPIType.STRING, enum=["password"], default="password"),
                "username": Schema(
                    type=OpenAPIType.STRING,
                    min_length=1,
                    max_length=320,
                    pattern=NO_NUL,
                    description="the username or the email",
                    examples=["ada_l"],
                ),
                "password": Schema(
                    type=OpenAPIType.STRING,
                    min_length=1,
                    max_length=128,
                    format="password",  # type: ignore[arg-type]
                    examples=["correct horse battery"],
                ),
                "scope": Schema(type=OpenAPIType.STRING, default="", description="ignored: scopes follow the account"),
            },
        )
        self.request_body = RequestBody(
            content={FORM: OpenAPIMediaType(schema=form), JSON: OpenAPIMediaType(schema=form)}, required=True
        )


# what the token endpoint and a browser sign-in share: the same credentials, limits and documented body
PASSWORD_LOGIN: Final[dict[str, Any]] = {
    "opt": {ACCEPTS: (FORM, JSON), RATE_LIMIT: "auth", HASHES_PASSWORD: True},
    "operation_class": TokenOperation,
    "responses": {401: problem_response("Wrong username or password"), **BUSY},
}


# for OpenAPI only: SessionCookies.cookies() sets them, with the max-age and Secure of the settings
SESSION_COOKIES: Final = [
    Cookie(key=SESSION_COOKIE, httponly=True, samesite="lax", documentation_only=True, description="The session"),
    Cookie(key=REFRESH_COOKIE, httponly=True, samesite="strict", documentation_only=True, description="Its renewal"),
    Cookie(key=CSRF_COOKIE, documentation_only=True, description="Send it back as X-CSRF-Token on unsafe methods"),
]


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post(
        "/token",
        summary="Log in for a token pair",
        status_code=200,
        **PASSWORD_LOGIN,
    )
    async def token(
        self, request: Request[Any, Any, Any], db_session: DbSession, hasher: Hasher, sessions: SessionPolicy
    ) -> TokenPair:
        """Log in with the OAuth2 password grant, as a form or as JSON; `username` may be the email. A wrong password
        and an unknown user get the same answer in similar time. Limited by the auth policy per client address."""
        credentials = await _read_token_request(request)
        return await service.log_in(
            db_session, hasher, sessions, login=credentials.username, password=credentials.password
        )

    @post(
        "/session",
        summary="Sign a browser in",
        status_code=204,
        response_cookies=SESSION_COOKIES,
        **PASSWORD_LOGIN,
    )
    async def start_session(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        hasher: Hasher,
        sessions: SessionPolicy,
        state: State,
    ) -> Response[None]:
        """Sign a browser in with the credentials of the token endpoint. The session travels in cookies: `keel_session`
        and `keel_refresh` (HttpOnly) and `keel_csrf`, which scripts read and send back as X-CSRF-Token on POST, PUT,
        PATCH and DELETE."""
        credentials = await _read_token_request(request)
        pair = await service.log_in(
            db_session, hasher, sessions, login=credentials.username, password=credentials.password
        )
        cookies: SessionCookies = state["session_cookies"]
        return Response(None, status_code=204, cookies=cookies.cookies(pair.access_token, pair.refresh_token))

    @delete(
        "/session",
        summary="Sign a browser out",
        status_code=204,
        opt=USER,
        security=SECURITY,
    )
    async def end_session(self, db_session: DbSession, sessions: SessionPolicy, state: State) -> Response[None]:
        """Sign a browser out: its session is revoked everywhere and its cookies are cleared."""
        await service.log_out(db_session, sessions, claims=current_principal())
        cookies: SessionCookies = state["session_cookies"]
        return Response(None, status_code=204, cookies=cookies.cleared())

    @post(
        "/refresh",
        summary="Refresh a token pair",
        status_code=200,
        responses={401: problem_response("The refresh token is invalid, expired or spent (its session then ends)")},
    )
    async def refresh(
        self, data: JSONBody[RefreshRequest], db_session: DbSession, sessions: SessionPolicy
    ) -> TokenPair:
        """Trade a refresh token for a new pair; the old one is spent. Presenting a spent one ends the whole session,
        unless it is the last one spent and KEEL_REFRESH_GRACE has not passed (a retry after a lost response)."""
        return await service.refresh(db_session, sessions, refresh_token=data.refresh_token)

    @post("/logout", summary="Log out", status_code=204, opt=USER, security=SECURITY)
    async def logout(self, db_session: DbSession, sessions: SessionPolicy) -> None:
        """End this session: its refresh tokens and access tokens stop working at once, on every instance."""
        await service.log_out(db_session, sessions, claims=current_principal())


async def _read_token_request(request: Request[Any, Any, Any]) -> TokenRequest:
    """The credentials of a form or a JSON body; a 422 names every bad field of either."""
    body = await request.body()
    if not body:
        raise ValidationException(extra=[{"loc": ["body"], "msg": "A body is required: a form or a JSON object."}])
    try:
        if request.headers.get("content-type", "").lower().startswith(FORM):
            form = await request.form()
            raw: object = {key: form.get(key) for key in form}
        else:
            raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValidationException(extra=[{"loc": ["body"], "msg": body_error(exc)}]) from None
    try:
        return msgspec.convert(raw, TokenRequest)  # a login waits for Argon2: two steps here cost nothing that shows
    except msgspec.ValidationError:
        raise ValidationException(extra=struct_errors(TokenRequest, raw, ["body"])) from None


@get(
    "/.well-known/jwks.json",
    summary="Get the token verification keys",
    tags=["auth"],
    sync_to_thread=False,
    cache_control=CacheControlHeader(max_age=300),
)
def jwks(state: State) -> dict[str, list[dict[str, str]]]:
    """The public keys that verify access tokens (RFC 7517); empty in HS256 mode."""
    keyring: Keyring = state["keyring"]
    return keyring.jwks()


CONTROLLERS: Final[list[type[Controller]]] = [
    PublicController,
    ProtectedController,
    UsersController,
    AuthController,
    RecoveryController,
]
LISTS: Final[dict[str, list[type[Controller]]]] = {"v1": [UserListV1], "v2": [UserListV2]}
