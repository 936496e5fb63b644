"""A 422 names every invalid or missing field wherever it is, body, form, query or path, in a sentence (SPEC §2);
OPTIONS names every method of its resource."""

from __future__ import annotations

from typing import Any

from tests.factories import Client, bearer, log_in, make_channel, register


def errors_of(response: Any) -> dict[tuple[str | int, ...], str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return {tuple(error["loc"]): error["msg"] for error in response.json()["errors"]}


async def signed_in(client: Client) -> dict[str, str]:
    await register(client, "ada")
    return bearer(await log_in(client, "ada"))


async def test_three_bad_query_and_path_parameters_are_three_entries(client: Client) -> None:
    auth = await signed_in(client)
    response = await client.get("/api/v1/channels/not-a-uuid/messages?limit=0&offset=-1", headers=auth)
    assert errors_of(response) == {
        ("path", "channel_id"): "Must be a UUID.",
        ("query", "limit"): "Must be at least 1.",
        ("query", "offset"): "Must be at least 0.",
    }
    response = await client.get("/api/v2/channels", params={"limit": "many", "cursor": "x" * 201}, headers=auth)
    assert errors_of(response) == {
        ("query", "limit"): "Must be an integer, not a string.",
        ("query", "cursor"): "Must be at most 200 characters long.",
    }


async def test_three_bad_form_fields_are_three_entries(client: Client) -> None:
    form = {"grant_type": "client_credentials", "username": "", "password": ""}
    for path in ("/api/v1/auth/token", "/api/v2/auth/session"):
        assert errors_of(await client.post(path, data=form)) == {
            ("body", "grant_type"): "Must be one of the allowed values, not 'client_credentials'.",
            ("body", "username"): "Must not be empty.",
            ("body", "password"): "Must not be empty.",
        }


async def test_a_missing_body_says_a_body_is_required(client: Client) -> None:
    # never Litestar's words for it (a KeyError's repr, "'data'"), nor "not valid JSON" for nothing at all
    assert errors_of(await client.post("/api/v2/auth/token")) == {
        ("body",): "A body is required: a form or a JSON object."
    }
    assert errors_of(await client.post("/api/v1/users")) == {("body",): "A JSON body is required."}


async def test_unknown_members_are_named_and_refused(client: Client) -> None:
    body = {"username": "grace", "email": "grace@example.com", "password": "s3cret-enough", "is_admin": True}
    assert errors_of(await client.post("/api/v1/users", json=body)) == {
        ("body", "is_admin"): "This field is not allowed."
    }


async def test_a_domain_422_names_its_field_too(client: Client) -> None:
    auth = await signed_in(client)
    channel = await make_channel(client, auth, "general")
    response = await client.get(f"/api/v2/channels/{channel['id']}/messages", params={"cursor": "bm9wZQ"}, headers=auth)
    assert response.json()["code"] == "pagination.invalid_cursor"
    assert errors_of(response) == {("query", "cursor"): "The cursor is not one this API issued."}


async def test_options_lists_every_method_of_the_resource(client: Client) -> None:
    auth = await signed_in(client)
    # two controllers share /users (the admin list and sign-up), one /auth/session (sign in, sign out)
    expected = {
        "/api/v1/users": "GET, HEAD, OPTIONS, POST",
        "/api/v2/auth/session": "DELETE, OPTIONS, POST",
        "/api/v1/public": "GET, HEAD, OPTIONS",
    }
    for path, allow in expected.items():
        response = await client.options(path, headers=auth)
        assert (response.status_code, response.headers["allow"]) == (204, allow)
