"""Look-alike names, NUL characters and password guessing with a stolen token, as clients meet them (both backends)."""

from __future__ import annotations

from itertools import count

import pytest
from httpx import Response
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.main import create_app
from keel.ratelimit.clients import ClientResolver
from keel.settings import RatePolicy, Settings
from tests.factories import PASSWORD, bearer, log_in, make_admin, register

Client = AsyncTestClient[Litestar]


def full_width(text: str) -> str:
    """`text` in full-width forms (U+FF01 to U+FF5E): it reads the same, but is other code points."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def sign_up(username: str = "valid_name", email: str = "valid@example.com") -> dict[str, str]:
    return {"username": username, "email": email, "password": PASSWORD}


def assert_invalid(response: Response, loc: list[str]) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "http.validation_error"
    assert [error["loc"] for error in body["errors"]] == [loc]
    assert "\\x" not in body["errors"][0]["msg"]  # a sentence, not a repr


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "alice\n"),  # Python's $ matches before a final newline
        ("username", full_width("alice")),  # full-width look-alike: refused, not folded (README: Accounts)
        ("username", "ali\x00ce"),
        ("email", "x@y.com\n"),
        ("email", "a@x..com"),
        ("email", "<script>@x.com"),
        ("email", "ad\u202ea@example.com"),  # a right-to-left override shows "ada" backwards
        ("email", "a\x00@example.com"),
        ("email", "ada@localhost"),
        ("email", '"a b"@example.com'),
        ("email", "a@" + "b" * 320 + ".com"),
    ],
)
async def test_sign_up_refuses_look_alikes_and_bad_syntax(client: Client, field: str, value: str) -> None:
    response = await client.post("/api/v1/users", json={**sign_up(), field: value})
    assert_invalid(response, ["body", field])


async def test_a_trailing_newline_does_not_make_a_second_alice(client: Client) -> None:
    await register(client, "alice")
    assert_invalid(await client.post("/api/v1/users", json=sign_up("alice\n")), ["body", "username"])
    wrong = await client.post("/api/v1/auth/token", data={"username": "alice\n", "password": PASSWORD})
    assert wrong.status_code == 401


async def test_a_trailing_newline_does_not_make_a_second_channel(client: Client) -> None:
    await register(client, "ada")
    auth = bearer(await log_in(client, "ada"))
    assert (await client.post("/api/v1/channels", json={"name": "general"}, headers=auth)).status_code == 201
    response = await client.post("/api/v1/channels", json={"name": "general\n"}, headers=auth)
    assert_invalid(response, ["body", "name"])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Äb@example.com", "äb@example.com"),  # SQLite's lower() folds ASCII only
        ("straße@example.com", "STRASSE@example.com"),  # casefold, not lower
        ("ab@example.com", full_width("ab") + "@example.com"),  # full-width: NFKC
        ("ab@example.com", "ab@EXAMPLE.com"),
        ("ab@bücher.de", "ab@xn--bcher-kva.de"),  # one domain, Unicode or IDNA
    ],
)
async def test_emails_are_unique_up_to_unicode_case_and_form(client: Client, first: str, second: str) -> None:
    await register(client, "first", first)
    response = await client.post("/api/v1/users", json=sign_up("second", second))
    assert response.status_code == 409
    assert response.json()["code"] == "accounts.email_taken"


@pytest.mark.parametrize(
    "login", ["ÄB@EXAMPLE.COM", "äb@example.com", "äb@Example.Com", "ÄB@" + full_width("EXAMPLE") + ".com"]
)
async def test_log_in_by_email_whatever_the_case(client: Client, login: str) -> None:
    await register(client, "ada", "Äb@example.com")
    await log_in(client, login)


async def test_a_full_width_login_finds_the_ascii_username(client: Client) -> None:
    # sign-up refuses the look-alike; a login compares canonical keys, and the password still decides
    await register(client, "alice")
    await log_in(client, full_width("ALICE"))


async def test_the_stored_email_is_the_normal_form(client: Client) -> None:
    user = await register(client, "ada", "Äda@Bücher.DE")
    assert user["email"] == "Äda@bücher.de"


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_a_nul_in_the_login_is_422_not_500(client: Client, encoding: str) -> None:
    await register(client, "ada")
    credentials = {"username": "ada\x00", "password": PASSWORD}
    response = await (
        client.post("/api/v1/auth/token", data=credentials)
        if encoding == "form"
        else client.post("/api/v1/auth/token", json=credentials)
    )
    assert_invalid(response, ["body", "username"])


async def test_create_admin_promotes_by_canonical_username(client: Client, settings: Settings) -> None:
    await register(client, "root", "old@example.com")
    await make_admin(settings, "ROOT")  # the same account: promoted, not a second one
    me = await client.get("/api/v1/users/me", headers=bearer(await log_in(client, "root")))
    assert me.json()["is_admin"] is True


STRICT_AUTH = "2/min burst 3"


async def _tokens(settings: Settings) -> dict[str, str]:
    """A user and a session, made while the auth policy is unlimited (the fixtures' settings)."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        await register(client, "ada")
        return await log_in(client, "ada")


async def change_password(client: Client, tokens: dict[str, str], current_password: str) -> Response:
    return await client.post(
        "/api/v1/users/me/password",
        headers=bearer(tokens),
        json={"current_password": current_password, "new_password": "a brand new password"},
    )


async def test_password_change_goes_through_the_auth_policy(settings: Settings) -> None:
    tokens = await _tokens(settings)
    strict = settings.model_copy(update={"auth_rate_limit": RatePolicy.parse(STRICT_AUTH)})
    async with AsyncTestClient(app=create_app(strict)) as client:
        for left in (2, 1, 0):
            response = await change_password(client, tokens, "a wrong guess")
            assert response.status_code == 403
            assert '"auth";q=3;w=90' in response.headers["ratelimit-policy"]
            assert f'"auth";r={left};' in response.headers["ratelimit"]
        refused = await change_password(client, tokens, PASSWORD)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert "auth policy" in refused.json()["detail"]
        assert '"auth";r=0' in refused.headers["ratelimit"]
        assert int(refused.headers["retry-after"]) >= 20  # 2/min: the next attempt in about 30 s
    async with AsyncTestClient(app=create_app(settings)) as client:
        # refused before the handler ran: even the right current password changed nothing
        await log_in(client, "ada", PASSWORD)


@pytest.fixture
def new_address_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request seems to come from another address, as a stolen token used from a botnet would."""
    addresses = count(1)
    monkeypatch.setattr(ClientResolver, "rate_key", lambda *_: f"ip:198.51.100.{next(addresses)}")


@pytest.mark.usefixtures("new_address_each_request")
async def test_a_stolen_token_gets_one_budget_of_guesses_from_any_number_of_addresses(settings: Settings) -> None:
    tokens = await _tokens(settings)
    strict = settings.model_copy(update={"auth_rate_limit": RatePolicy.parse(STRICT_AUTH)})
    async with AsyncTestClient(app=create_app(strict)) as client:
        for _ in range(3):
            response = await change_password(client, tokens, "a wrong guess")
            assert response.status_code == 403
        refused = await change_password(client, tokens, "another guess")
        assert refused.status_code == 429
        assert refused.headers["ratelimit"].count('"auth"') == 1  # the stricter bucket, named once
        # logins are still keyed by address alone: a new address may log in
        assert (await client.post("/api/v1/auth/token", data={"username": "ada", "password": PASSWORD})).is_success
