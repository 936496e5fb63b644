"""Refresh retries (SPEC §4): the last-spent refresh token of a family may come back within KEEL_REFRESH_GRACE."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.main import create_app
from tests.conftest import Backend, make_settings
from tests.factories import bearer, log_in, register
from tests.servers import keel_serve, scaled_env, sign_up

Client = AsyncTestClient[Litestar]


def session_id(tokens: dict[str, Any]) -> str:
    """The `sid` of the pair's access token: the refresh family it belongs to."""
    payload = tokens["access_token"].split(".")[1]
    sid: str = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"]
    return sid


async def refresh(client: Client, refresh_token: str) -> Any:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})


@pytest.fixture
async def graced(backend: Backend) -> Any:
    """A client whose server forgives a retry for 1 s: long enough to retry, short enough to outwait."""
    async with AsyncTestClient(app=create_app(make_settings(backend, KEEL_REFRESH_GRACE="1s"))) as client:
        yield client


async def test_a_retry_within_the_grace_gets_a_pair_of_the_same_family(client: Client) -> None:
    await register(client)
    first = await log_in(client)
    second = await refresh(client, first["refresh_token"])
    retry = await refresh(client, first["refresh_token"])  # the response to `second` was lost
    assert (second.status_code, retry.status_code) == (200, 200)
    assert session_id(retry.json()) == session_id(second.json()) == session_id(first)
    assert retry.json()["refresh_token"] != second.json()["refresh_token"]
    # both siblings stay usable: nothing was revoked
    assert (await client.get("/api/v1/users/me", headers=bearer(second.json()))).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=bearer(retry.json()))).status_code == 200
    assert (await refresh(client, second.json()["refresh_token"])).status_code == 200
    assert (await refresh(client, retry.json()["refresh_token"])).status_code == 200


async def test_a_retry_after_the_grace_revokes_the_family(graced: Client) -> None:
    await register(graced)
    first = await log_in(graced)
    second = (await refresh(graced, first["refresh_token"])).json()
    sibling = (await refresh(graced, first["refresh_token"])).json()  # within the grace
    await asyncio.sleep(1.2)
    late = await refresh(graced, first["refresh_token"])
    assert late.status_code == 401
    assert late.json()["code"] == "accounts.invalid_refresh_token"
    for tokens in (second, sibling):
        assert (await refresh(graced, tokens["refresh_token"])).status_code == 401
        assert (await graced.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 401


async def test_an_older_spent_token_revokes_the_family(client: Client) -> None:
    await register(client)
    first = await log_in(client)
    second = (await refresh(client, first["refresh_token"])).json()
    third = (await refresh(client, second["refresh_token"])).json()
    # `first` is within the grace, but its child has been spent: it is not the last spent any more
    reuse = await refresh(client, first["refresh_token"])
    assert reuse.status_code == 401
    assert (await refresh(client, third["refresh_token"])).status_code == 401
    assert (await client.get("/api/v1/users/me", headers=bearer(third))).status_code == 401


async def test_a_revoked_family_gets_no_grace(client: Client) -> None:
    await register(client)
    first = await log_in(client)
    second = (await refresh(client, first["refresh_token"])).json()
    assert (await client.post("/api/v1/auth/logout", headers=bearer(second))).status_code == 204
    assert (await refresh(client, first["refresh_token"])).status_code == 401
    assert (await refresh(client, second["refresh_token"])).status_code == 401


async def test_concurrent_refreshes_in_one_process_all_succeed(client: Client) -> None:
    await register(client)
    first = await log_in(client)
    responses = await asyncio.gather(*(refresh(client, first["refresh_token"]) for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert {session_id(r.json()) for r in responses} == {session_id(first)}
    assert len({r.json()["refresh_token"] for r in responses}) == 4


def test_two_instances_refreshing_the_same_token_at_once_both_succeed(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = scaled_env(pg_url, redis_url)
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        tokens = sign_up(a.url)

        async def race(refresh_token: str) -> list[httpx.Response]:
            async with httpx.AsyncClient() as http:
                return list(
                    await asyncio.gather(
                        *(
                            http.post(f"{base}/api/v1/auth/refresh", json={"refresh_token": refresh_token})
                            for base in (a.url, b.url, a.url, b.url)
                        )
                    )
                )

        # the first use of a token, raced: one request rotates it, the others are retries within the grace
        first_race = asyncio.run(race(tokens["refresh_token"]))
        assert [r.status_code for r in first_race] == [200] * 4, [r.text for r in first_race]
        assert {session_id(r.json()) for r in first_race} == {session_id(tokens)}
        # the same token again, all at once: still the last spent, still within the grace
        second_race = asyncio.run(race(tokens["refresh_token"]))
        assert [r.status_code for r in second_race] == [200] * 4, [r.text for r in second_race]
        assert {session_id(r.json()) for r in second_race} == {session_id(tokens)}
        # one of the children is spent: the original token is now an older one, and its reuse ends the session
        child = first_race[0].json()
        assert httpx.post(f"{b.url}/api/v1/auth/refresh", json={"refresh_token": child["refresh_token"]}).is_success
        reuse = httpx.post(f"{a.url}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert reuse.status_code == 401
        sibling = second_race[0].json()
        assert (
            httpx.post(f"{b.url}/api/v1/auth/refresh", json={"refresh_token": sibling["refresh_token"]}).status_code
            == 401
        )
