"""Idempotency-Key on the REST writes (SPEC §6), on both backends."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from litestar import Litestar
from sqlalchemy import select

from keel import db
from keel.http.idempotency import IdempotencyEdge
from keel.idempotency.models import IdempotencyRecord
from keel.idempotency.service import Claim
from keel.realtime.service import POST_MESSAGE
from keel.settings import Settings
from tests.factories import PASSWORD, Client, bearer, log_in, make_channel, register

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


async def user(client: Client, name: str = "ada") -> dict[str, str]:
    await register(client, name)
    return bearer(await log_in(client, name))


async def records(settings: Settings) -> list[IdempotencyRecord]:
    engine = db.create_engine(settings.database_url)
    try:
        async with db.create_sessionmaker(engine)() as session:
            return list(await session.scalars(select(IdempotencyRecord)))
    finally:
        await engine.dispose()


async def messages(client: Client, auth: dict[str, str], channel: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/channels/{channel}/messages", headers=auth)
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()
    return found


async def test_a_retry_replays_the_first_answer_and_posts_once(client: Client) -> None:
    auth = await user(client)
    channel = (await make_channel(client, auth, "general"))["id"]
    path = f"/api/v1/channels/{channel}/messages"
    first = await client.post(path, json={"body": "hi"}, headers={**auth, KEY: "k-1"})
    assert first.status_code == 201
    assert REPLAYED not in first.headers
    # member order and spacing do not matter, nor does the API version: the same request, the same operation
    for retry_path in (path, path.replace("/v1/", "/v2/")):
        again = await client.post(
            retry_path, content=b'{ "body" : "hi" }', headers={**auth, KEY: "k-1", "Content-Type": "application/json"}
        )
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers[REPLAYED] == "true"
        assert again.headers["content-type"] == "application/json"
    assert [m["id"] for m in await messages(client, auth, channel)] == [first.json()["id"]]
    assert (await client.get(f"/api/v1/channels/{channel}", headers=auth)).json()["last_seq"] == 1


async def test_a_channel_creation_retry_replays(client: Client) -> None:
    auth = await user(client)
    first = await client.post("/api/v1/channels", json={"name": "once"}, headers={**auth, KEY: "c"})
    again = await client.post("/api/v2/channels", json={"name": "once"}, headers={**auth, KEY: "c"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers[REPLAYED] == "true"
    assert len((await client.get("/api/v1/channels", headers=auth)).json()) == 1


async def test_the_same_key_for_another_request_is_422_and_does_nothing(client: Client) -> None:
    auth = await user(client)
    channel = (await make_channel(client, auth, "general"))["id"]
    other = (await make_channel(client, auth, "other"))["id"]
    assert (
        await client.post(f"/api/v1/channels/{channel}/messages", json={"body": "hi"}, headers={**auth, KEY: "k"})
    ).status_code == 201
    for target, body in ((channel, "changed"), (other, "hi")):
        response = await client.post(
            f"/api/v1/channels/{target}/messages", json={"body": body}, headers={**auth, KEY: "k"}
        )
        assert response.status_code == 422
        problem = response.json()
        assert problem["code"] == "http.idempotency_key_reused"
        assert problem["errors"][0]["loc"] == ["header", KEY]
    assert len(await messages(client, auth, channel)) == 1
    assert await messages(client, auth, other) == []


async def test_a_sign_up_retry_replays_and_its_password_is_never_stored(client: Client, settings: Settings) -> None:
    body = {"username": "grace", "email": "grace@example.com", "password": PASSWORD}
    first = await client.post("/api/v1/users", json=body, headers={KEY: "signup"})
    again = await client.post("/api/v1/users", json=body, headers={KEY: "signup"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers[REPLAYED] == "true"
    other_password = await client.post(
        "/api/v1/users", json={**body, "password": "another one!"}, headers={KEY: "signup"}
    )
    assert other_password.json()["code"] == "http.idempotency_key_reused"
    [record] = await records(settings)
    assert record.scope == "ip:testclient"  # anonymous: the client address (the test client names its peer so)
    assert PASSWORD.encode() not in record.body + record.fingerprint + repr(record.headers).encode()
    assert len(record.fingerprint) == 32


async def test_callers_and_endpoints_have_keys_of_their_own(client: Client) -> None:
    ada, bob = await user(client, "ada"), await user(client, "bob")
    created = await client.post("/api/v1/channels", json={"name": "shared"}, headers={**ada, KEY: "same"})
    assert created.status_code == 201
    channel = created.json()["id"]
    for auth in (ada, bob):  # the key ada spent on a channel, and bob's own use of it
        response = await client.post(
            f"/api/v1/channels/{channel}/messages", json={"body": "hi"}, headers={**auth, KEY: "same"}
        )
        assert response.status_code == 201
        assert REPLAYED not in response.headers
    assert len(await messages(client, ada, channel)) == 2


async def test_a_failed_request_is_not_recorded_and_may_be_retried(client: Client, settings: Settings) -> None:
    auth = await user(client)
    missing = await client.post(
        f"/api/v1/channels/{uuid.uuid4()}/messages", json={"body": "x"}, headers={**auth, KEY: "f"}
    )
    assert missing.status_code == 404
    await make_channel(client, auth, "taken")
    taken = await client.post("/api/v1/channels", json={"name": "taken"}, headers={**auth, KEY: "t"})
    assert taken.status_code == 409
    assert await records(settings) == []
    retried = await client.post("/api/v1/channels", json={"name": "free"}, headers={**auth, KEY: "t"})
    assert retried.status_code == 201
    assert REPLAYED not in retried.headers


async def test_bad_keys_are_422_naming_the_header(client: Client) -> None:
    auth = await user(client)
    bad = [[b""], [b"x" * 256], [b"with space"], [b"tab\there"], ["café".encode()], [b"a", b"b"]]
    own = [(name.encode(), value.encode()) for name, value in auth.items()]
    for values in bad:
        headers = [*own, *((KEY.encode(), value) for value in values)]
        response = await client.post("/api/v1/channels", json={"name": "never"}, headers=headers)
        assert response.status_code == 422, headers
        problem = response.json()
        assert problem["code"] == "http.validation_error"
        assert [e["loc"] for e in problem["errors"]] == [["header", KEY]]
    assert (await client.get("/api/v1/channels", headers=auth)).json() == []
    longest = await client.post("/api/v1/channels", json={"name": "ok"}, headers={**auth, KEY: "~" * 255})
    assert longest.status_code == 201


async def test_a_repeat_while_the_first_is_in_flight_is_409(client: Client, app: Litestar, settings: Settings) -> None:
    auth = await user(client)
    channel = (await make_channel(client, auth, "general"))["id"]
    me = (await client.get("/api/v1/users/me", headers=auth)).json()["id"]
    edge: IdempotencyEdge = app.state.idempotency
    started, release = asyncio.Event(), asyncio.Event()

    async def held(claim: Claim | None) -> None:  # the first request, held inside its transaction
        started.set()
        await release.wait()

    attempt = edge.service.attempt(scope=f"user:{me}", operation=POST_MESSAGE, key="busy", request=b"")
    engine = db.create_engine(settings.database_url)  # the app's own lives on the test client's loop
    try:
        async with db.create_sessionmaker(engine)() as session:
            first = asyncio.create_task(edge.service.run(session, attempt, held))
            await started.wait()
            response = await client.post(
                f"/api/v1/channels/{channel}/messages", json={"body": "hi"}, headers={**auth, KEY: "busy"}
            )
            release.set()
            await first
    finally:
        await engine.dispose()
    assert response.status_code == 409
    assert response.json()["code"] == "http.idempotency_key_in_use"
    assert await messages(client, auth, channel) == []
