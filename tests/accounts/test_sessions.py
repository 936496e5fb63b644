"""Browser sessions over HTTP (SPEC §4): the cookies, what they authenticate, CSRF, sign-out, revocation, renewal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.main import create_app
from tests.conftest import Backend, make_settings
from tests.factories import PASSWORD, Client, bearer, log_in, make_channel, register


async def sign_in(client: Client, username: str = "ada", *, form: bool = True) -> str:
    """Start a browser session on `client` (its cookie jar keeps it): the keel_csrf cookie's value."""
    credentials = {"username": username, "password": PASSWORD}
    response = await (
        client.post("/api/v1/auth/session", data=credentials)
        if form
        else client.post("/api/v1/auth/session", json=credentials)
    )
    assert response.status_code == 204, response.text
    csrf: str = client.cookies["keel_csrf"]
    return csrf


def cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    """A Cookie header of these cookies: it replaces the client's jar for one request."""
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}


def set_cookies(response: object) -> dict[str, str]:
    """name → the whole Set-Cookie line, for the cookies a response sets."""
    lines = response.headers.get_list("set-cookie")  # type: ignore[attr-defined]
    return {line.split("=", 1)[0]: line for line in lines}


async def test_sign_in_sets_the_session_cookies(client: Client) -> None:
    await register(client)
    response = await client.post("/api/v1/auth/session", json={"username": "ada", "password": PASSWORD})
    assert response.status_code == 204
    cookies = set_cookies(response)
    assert set(cookies) == {"keel_session", "keel_refresh", "keel_csrf"}
    session = cookies["keel_session"].lower()
    assert "httponly" in session
    assert "samesite=lax" in session
    assert "path=/" in session
    assert "max-age=2592000" in session  # KEEL_REFRESH_TOKEN_TTL's 30 days, not the access token's 15 minutes
    assert "secure" not in session  # KEEL_ENV=development serves http://127.0.0.1
    assert "httponly" in cookies["keel_refresh"].lower()
    assert "samesite=strict" in cookies["keel_refresh"].lower()
    assert "httponly" not in cookies["keel_csrf"].lower()  # the page's script reads it


@pytest.mark.parametrize("backend", ["scaled"], indirect=True)  # KEEL_ENV=production refuses SQLite
async def test_session_cookies_are_secure_outside_development(backend: Backend) -> None:
    settings = make_settings(
        backend, KEEL_ENV="production", KEEL_JWT_SECRET="x" * 48, KEEL_SMTP_URL="smtp://127.0.0.1:1"
    )
    async with AsyncTestClient(app=create_app(settings), base_url="https://127.0.0.1") as client:
        await register(client)
        response = await client.post("/api/v2/auth/session", data={"username": "ada", "password": PASSWORD})
        assert response.status_code == 204
        assert all("secure" in line.lower() for line in set_cookies(response).values())


async def test_a_session_cookie_authenticates_like_a_bearer_token(client: Client) -> None:
    await register(client)
    await sign_in(client, form=False)
    response = await client.get("/api/v1/protected")
    assert response.status_code == 200
    assert response.json()["username"] == "ada"
    assert (await client.get("/api/v2/users/me")).json()["username"] == "ada"


async def test_wrong_credentials_set_no_cookie(client: Client) -> None:
    await register(client)
    response = await client.post("/api/v1/auth/session", data={"username": "ada", "password": "wrong password"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


async def test_with_a_bearer_and_a_cookie_the_bearer_decides(client: Client) -> None:
    await register(client)
    await register(client, "bob")
    await sign_in(client)
    as_bob = await client.get("/api/v1/protected", headers=bearer(await log_in(client, "bob")))
    assert as_bob.json()["username"] == "bob"
    bad = await client.get("/api/v1/protected", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401  # a valid cookie does not rescue an invalid bearer token


async def test_unsafe_methods_need_the_csrf_header(client: Client) -> None:
    await register(client)
    csrf = await sign_in(client)
    missing = await client.post("/api/v1/channels", json={"name": "general"})
    assert missing.status_code == 403
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "http.csrf_failed"
    wrong = await client.post("/api/v1/channels", json={"name": "general"}, headers={"X-CSRF-Token": csrf + "x"})
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "http.csrf_failed"
    right = await client.post("/api/v1/channels", json={"name": "general"}, headers={"X-CSRF-Token": csrf})
    assert right.status_code == 201
    assert (await client.get("/api/v1/channels")).status_code == 200  # safe methods need none


async def test_bearer_requests_need_no_csrf_header(client: Client) -> None:
    await register(client)
    await sign_in(client)  # a cookie is there too, but the bearer decides
    await make_channel(client, bearer(await log_in(client)), "general")


async def test_sign_out_revokes_the_session_and_clears_the_cookies(client: Client) -> None:
    await register(client)
    csrf = await sign_in(client)
    old = dict(client.cookies)
    assert (await client.delete("/api/v1/auth/session")).status_code == 403  # CSRF applies to DELETE too
    response = await client.delete("/api/v1/auth/session", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 204
    cleared = set_cookies(response)
    assert set(cleared) == {"keel_session", "keel_refresh", "keel_csrf"}
    assert all("max-age=0" in line.lower() for line in cleared.values())
    assert not client.cookies.get("keel_session")
    replayed = await client.get("/api/v1/protected", headers=cookie_header(old))
    assert replayed.status_code == 401


async def test_a_password_change_revokes_browser_sessions(client: Client) -> None:
    await register(client)
    await sign_in(client)
    tokens = await log_in(client)
    change = await client.post(
        "/api/v1/users/me/password",
        json={"current_password": PASSWORD, "new_password": "a whole new secret"},
        headers=bearer(tokens),
    )
    assert change.status_code == 204
    response = await client.get("/api/v1/protected")
    assert response.status_code == 401
    assert all("max-age=0" in line.lower() for line in set_cookies(response).values())  # the dead session is cleared


@pytest.fixture
async def short_client(backend: Backend) -> AsyncIterator[Client]:
    """A client of an app whose access tokens live 2 s: the session cookie must be renewed within a test."""
    app: Litestar = create_app(make_settings(backend, KEEL_ACCESS_TOKEN_TTL="2s"))
    async with AsyncTestClient(app=app, base_url="http://127.0.0.1") as client:
        yield client


async def test_the_session_is_renewed_when_its_access_token_expires(short_client: Client) -> None:
    client = short_client
    await register(client)
    csrf = await sign_in(client)
    first_access, first_refresh = client.cookies["keel_session"], client.cookies["keel_refresh"]
    fresh = await client.get("/api/v1/protected")
    assert fresh.status_code == 200
    assert "set-cookie" not in fresh.headers  # a fresh access cookie costs no renewal
    await asyncio.sleep(2.2)  # past exp (the verifier's 30 s leeway aside, renewal starts in the last quarter)
    renewed = await client.get("/api/v1/protected")
    assert renewed.status_code == 200
    assert set(set_cookies(renewed)) == {"keel_session", "keel_refresh", "keel_csrf"}
    assert client.cookies["keel_session"] != first_access
    assert client.cookies["keel_refresh"] != first_refresh
    assert client.cookies["keel_csrf"] == csrf  # the page's copy stays right
    assert "set-cookie" not in (await client.get("/api/v1/protected")).headers
    # the spent pair presented again at once (a tab whose request raced this one) is forgiven within the grace
    reused = await client.get(
        "/api/v1/protected", headers=cookie_header({"keel_session": first_access, "keel_refresh": first_refresh})
    )
    assert reused.status_code == 200  # within KEEL_REFRESH_GRACE: another tab racing, forgiven


async def test_requests_racing_with_the_same_spent_cookie_all_pass(short_client: Client) -> None:
    """A page's requests (or two tabs) that all carry the expired access cookie: one rotation, or the grace."""
    client = short_client
    await register(client)
    await sign_in(client)
    cookies = cookie_header(dict(client.cookies))
    await asyncio.sleep(2.2)
    responses = await asyncio.gather(*(client.get("/api/v1/protected", headers=cookies) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert all("keel_session" in set_cookies(r) for r in responses)
    assert (await client.get("/api/v1/protected")).status_code == 200


async def test_without_its_refresh_cookie_a_session_is_not_renewed(short_client: Client) -> None:
    client = short_client
    await register(client)
    await sign_in(client)
    access = client.cookies["keel_session"]
    await asyncio.sleep(2.2)
    response = await client.get("/api/v1/protected", headers=cookie_header({"keel_session": access}))
    # the verifier's leeway still accepts it for 30 s; without a refresh cookie nothing renews it
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
