"""Look-alike names and NUL characters, as clients meet them (both backends)."""

from __future__ import annotations

import pytest
from httpx import Response
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.settings import Settings
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
