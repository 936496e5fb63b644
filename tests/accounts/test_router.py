from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from keel import db
from keel.accounts import deps as accounts_deps
from keel.accounts import service as accounts_service
from keel.accounts.errors import PasswordPoolBusy
from keel.accounts.models import User
from keel.accounts.passwords import Argon2Settings, PasswordHasher
from keel.http.auth import current_principal
from keel.main import create_app
from keel.settings import Settings
from keel.shared import open_backends
from tests.factories import PASSWORD, bearer, log_in, make_admin, register

Client = AsyncTestClient[Litestar]


async def test_register_returns_the_user_without_secrets(client: Client) -> None:
    user = await register(client, "ada", "Ada@Example.com")
    assert set(user) == {"id", "username", "email", "email_verified", "is_admin", "created_at"}
    assert user["email_verified"] is False  # until a verification mail's token comes back
    # email-validator's normal form: the domain lower-cased, the local part as typed
    assert (user["username"], user["email"], user["is_admin"]) == ("ada", "Ada@example.com", False)
    assert user["created_at"].endswith(("Z", "+00:00"))


@pytest.mark.parametrize(
    ("username", "email", "code"),
    [
        ("ADA", "other@example.com", "accounts.username_taken"),
        ("other", "ADA@EXAMPLE.COM", "accounts.email_taken"),
    ],
)
async def test_register_rejects_taken_names_whatever_the_case(
    client: Client, username: str, email: str, code: str
) -> None:
    await register(client, "ada", "ada@example.com")
    response = await client.post("/api/v1/users", json={"username": username, "email": email, "password": PASSWORD})
    assert response.status_code == 409
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "ab"),
        ("username", "a" * 33),
        ("username", "has space"),
        ("username", "émile"),
        ("email", "not-an-email"),
        ("email", "a@b"),
        ("email", "two@@example.com"),
        ("password", "x" * 7),
        ("password", "x" * 129),
    ],
)
async def test_register_validation(client: Client, field: str, value: str) -> None:
    body = {"username": "valid_name", "email": "valid@example.com", "password": PASSWORD, field: value}
    response = await client.post("/api/v1/users", json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", field]


async def test_passwords_at_the_bounds_are_accepted(client: Client) -> None:
    await register(client, "eight", password="x" * 8)
    await register(client, "long", password="y" * 128)
    await log_in(client, "long", "y" * 128)


@pytest.mark.parametrize("login", ["ada", "ADA", "ada@example.com"])
async def test_log_in_by_username_or_email_with_a_form(client: Client, login: str) -> None:
    await register(client, "ada")
    tokens = await log_in(client, login)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    assert len(tokens["refresh_token"]) >= 43  # 256 bits, base64url


async def test_log_in_with_json(client: Client) -> None:
    await register(client, "ada")
    response = await client.post("/api/v1/auth/token", json={"username": "ada", "password": PASSWORD})
    assert response.status_code == 200
    me = await client.get("/api/v1/users/me", headers=bearer(response.json()))
    assert me.json()["username"] == "ada"


async def test_token_endpoint_wants_a_form_or_json(client: Client) -> None:
    response = await client.post("/api/v1/auth/token", content=b"username=ada", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    missing = await client.post("/api/v1/auth/token", data={"username": "ada"})
    assert missing.status_code == 422


async def test_wrong_password_and_unknown_user_look_the_same(client: Client) -> None:
    await register(client, "ada")
    wrong = await client.post("/api/v1/auth/token", data={"username": "ada", "password": "wrong password"})
    unknown = await client.post("/api/v1/auth/token", data={"username": "nobody", "password": "wrong password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "accounts.invalid_credentials"


async def test_me_needs_a_token(client: Client) -> None:
    response = await client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "accounts.authentication_required"


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer ", "Bearer a.b.c", "bearer x.y"])
async def test_a_bad_token_is_invalid_token(client: Client, header: str) -> None:
    response = await client.get("/api/v1/users/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_protected_and_v2(client: Client) -> None:
    user = await register(client, "ada")
    tokens = await log_in(client)
    for version in ("v1", "v2"):
        response = await client.get(f"/api/{version}/protected", headers=bearer(tokens))
        assert response.status_code == 200
        assert response.json() == {"message": "Hello, ada.", "user_id": user["id"], "username": "ada"}
    assert (await client.get("/api/v2/users/me", headers=bearer(tokens))).json() == user


async def test_a_refresh_token_is_not_an_access_token(client: Client) -> None:
    await register(client)
    tokens = await log_in(client)
    response = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    assert response.status_code == 401


async def test_refresh_rotates_and_the_old_token_is_spent(client: Client) -> None:
    await register(client)
    first = await log_in(client)
    second = (await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await client.get("/api/v1/users/me", headers=bearer(second))).status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_family(client: Client) -> None:
    await register(client)
    first = await log_in(client)
    other_session = await log_in(client)
    second = (await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    third = (await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()
    reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "accounts.invalid_refresh_token"
    # every descendant is dead: the latest refresh token and the access tokens of the family
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
    ).status_code == 401
    assert (await client.get("/api/v1/users/me", headers=bearer(third))).status_code == 401
    # another session of the same user is untouched
    assert (await client.get("/api/v1/users/me", headers=bearer(other_session))).status_code == 200


async def test_logout_revokes_the_access_token_at_once(client: Client) -> None:
    await register(client)
    tokens = await log_in(client)
    assert (await client.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 200  # now cached
    assert (await client.post("/api/v1/auth/logout", headers=bearer(tokens))).status_code == 204
    after = await client.get("/api/v1/users/me", headers=bearer(tokens))
    assert after.status_code == 401
    assert after.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401


async def test_password_change_ends_every_other_session(client: Client) -> None:
    await register(client)
    this, other = await log_in(client), await log_in(client)
    response = await client.post(
        "/api/v1/users/me/password",
        headers=bearer(this),
        json={"current_password": PASSWORD, "new_password": "a brand new password"},
    )
    assert response.status_code == 204
    assert (await client.get("/api/v1/users/me", headers=bearer(this))).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=bearer(other))).status_code == 401
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    ).status_code == 401
    old = await client.post("/api/v1/auth/token", data={"username": "ada", "password": PASSWORD})
    assert old.status_code == 401
    await log_in(client, "ada", "a brand new password")


async def test_password_change_needs_the_current_password(client: Client) -> None:
    await register(client)
    tokens = await log_in(client)
    response = await client.post(
        "/api/v1/users/me/password",
        headers=bearer(tokens),
        json={"current_password": "not it at all", "new_password": "a brand new password"},
    )
    assert response.status_code == 403
    assert response.json()["code"] == "accounts.wrong_password"


async def test_user_list_is_for_admins(client: Client, settings: Settings) -> None:
    await register(client, "ada")
    response = await client.get("/api/v1/users", headers=bearer(await log_in(client)))
    assert response.status_code == 403
    assert response.json()["code"] == "accounts.admin_required"

    await make_admin(settings, "root")
    admin = await log_in(client, "root")
    listed = await client.get("/api/v1/users?limit=10", headers=bearer(admin))
    assert listed.status_code == 200
    assert [u["username"] for u in listed.json()] == ["ada", "root"]
    assert (await client.get("/api/v1/users?limit=101", headers=bearer(admin))).status_code == 422


async def test_jwks_is_empty_in_hs256_mode(client: Client) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.json() == {"keys": []}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=300))
async def test_arbitrary_authorization_headers_never_cause_a_500(client: Client, value: bytes) -> None:
    headers = [(b"authorization", value.replace(b"\r", b"").replace(b"\n", b""))]
    for path in ("/api/v1/protected", "/api/v1/public"):
        response = await client.get(path, headers=headers)
        assert response.status_code in (200, 401), response.text


async def test_login_rehashes_a_password_made_with_older_parameters(client: Client, settings: Settings) -> None:
    await register(client, "ada")
    engine = db.create_engine(settings.database_url)
    old = PasswordHasher(Argon2Settings(time_cost=3), workers=1)
    try:
        async with db.create_sessionmaker(engine)() as session:
            user = await session.scalar(select(User).where(User.username == "ada"))
            assert user is not None
            user.password_hash = await old.hash(PASSWORD)
            await session.commit()
        await log_in(client, "ada")
        async with db.create_sessionmaker(engine)() as session:
            stored = await session.scalar(select(User.password_hash).where(User.username == "ada"))
    finally:
        old.close()
        await engine.dispose()
    assert stored is not None
    assert "t=2" in stored
    assert "m=19456" in stored


async def test_the_form_swagger_ui_sends_logs_in(client: Client) -> None:
    await register(client, "ada")
    response = await client.post(
        "/api/v1/auth/token",
        content=f"grant_type=password&username=ada&password={PASSWORD.replace(' ', '+')}&scope=&client_id=",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"


async def test_openapi_documents_both_security_schemes(client: Client) -> None:
    document = (await client.get("/api-docs/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["OAuth2Password"]["flows"]["password"]["tokenUrl"] == "/api/v1/auth/token"
    assert document["paths"]["/api/v1/users/me"]["get"]["security"] == [
        {"BearerAuth": []},
        {"OAuth2Password": []},
        {"SessionCookie": []},
    ]
    assert schemes["SessionCookie"] == {
        "type": "apiKey",
        "name": "keel_session",
        "in": "cookie",
        "description": schemes["SessionCookie"]["description"],
    }
    assert document["paths"]["/api/v1/auth/session"]["delete"]["security"][-1] == {"SessionCookie": []}
    token = document["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"]
    assert {"application/x-www-form-urlencoded", "application/json"} <= token.keys()


async def test_v2_user_list_pages_by_cursor(client: Client, settings: Settings) -> None:
    for name in ("user1", "user2", "user3"):
        await register(client, name)
    await make_admin(settings, "root")
    admin = bearer(await log_in(client, "root"))
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/api/v2/users?{query}", headers=admin)).json()
        seen += [user["username"] for user in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["user1", "user2", "user3", "root"]
    assert (await client.get("/api/v2/users?cursor=%%%", headers=admin)).status_code == 422


async def test_refusals_carry_the_whole_problem_and_the_rate_limit_headers(client: Client) -> None:
    response = await client.get("/api/v1/protected")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "ratelimit" in response.headers  # refused after the limiter ran: the refusal counted
    assert response.json() == {
        "type": "urn:keel:problem:accounts.authentication_required",
        "title": "Authentication required",
        "status": 401,
        "detail": "This endpoint needs a bearer token.",
        "code": "accounts.authentication_required",
    }


async def test_a_saturated_hasher_refuses_before_reading_the_request(
    app: Litestar, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_deps, "REFUSAL_PACE", 0.2)
    hasher: PasswordHasher = app.state.hasher
    with contextlib.ExitStack() as places:
        while True:  # take every place, as a flood of logins would
            try:
                places.enter_context(hasher.admission())
            except PasswordPoolBusy:
                break
        # a body that would be 415 once read: the refusal comes first, so nothing was parsed
        started = time.monotonic()
        response = await client.post("/api/v1/auth/token", content=b"x", headers={"Content-Type": "text/plain"})
        assert time.monotonic() - started >= 0.2  # held, so a client that retries at once is paced
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "3"
        assert "ratelimit" in response.headers
        assert response.json() == {
            "type": "urn:keel:problem:accounts.busy",
            "title": "Busy hashing passwords",
            "status": 503,
            "detail": "Busy hashing passwords",
            "code": "accounts.busy",
        }
        sign_up = {"username": "ada", "email": "ada@example.com", "password": PASSWORD}
        assert (await client.post("/api/v1/users", json=sign_up)).status_code == 503
    assert (await client.post("/api/v1/users", json=sign_up)).status_code == 201


@get("/test/whoami", sync_to_thread=False)
def whoami() -> str:
    return current_principal().username  # without opt=USER: a programming error


async def test_a_caller_is_seen_only_by_handlers_that_require_one(settings: Settings) -> None:
    async with AsyncTestClient(app=create_app(settings, extra_handlers=[whoami])) as client:
        await register(client, "ada")
        headers = bearer(await log_in(client))
        assert (await client.get("/api/v1/protected", headers=headers)).json()["username"] == "ada"
        # the caller of the request before is gone, and a valid token does not make the mistake work
        assert (await client.get("/test/whoami", headers=headers)).status_code == 500


async def test_me_is_a_conditional_read_that_a_write_to_the_account_invalidates(
    client: Client, settings: Settings
) -> None:
    await register(client, "ada")
    auth = bearer(await log_in(client))
    first = await client.get("/api/v1/users/me", headers=auth)
    assert first.json()["is_admin"] is False
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    unchanged = await client.get("/api/v1/users/me", headers={**auth, "If-None-Match": etag})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    # a promotion as `keel create-admin` makes it: through its own Redis client to the shared cache (scaled), or,
    # embedded, through the app's in-process cache (which the CLI cannot reach: there the TTL bounds staleness)
    engine = db.create_engine(settings.database_url)
    hasher = PasswordHasher(workers=1)
    backends = await open_backends(settings.redis_url)
    cache = backends.cache if settings.redis_url else client.app.state.backends.cache
    try:
        async with db.create_sessionmaker(engine)() as session:
            await accounts_service.create_admin(
                session, hasher, cache, username="ada", email="ada.new@example.com", password=PASSWORD
            )
    finally:
        hasher.close()
        await backends.close()
        await engine.dispose()
    changed = await client.get("/api/v1/users/me", headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200
    assert (changed.json()["is_admin"], changed.json()["email"]) == (True, "ada.new@example.com")
    assert changed.headers["etag"] != etag
