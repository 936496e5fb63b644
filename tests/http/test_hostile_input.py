"""Hostile input against a real `keel serve` (SPEC §2): a clear 4xx, never a 500, nothing half-written.

One server per backend serves the whole module; every test leaves it as it found it, or only adds rows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from keel import db
from keel.types import MAX_INT64
from tests.conftest import TEST_JWT_SECRET, empty_tables, flush, migrate
from tests.servers import Server, keel_serve, sign_up


@dataclass
class Target:
    server: Server
    database_url: str
    auth: dict[str, str]
    refresh_token: str
    channel: str

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **options: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={**self.auth, **options.pop("headers", {})}, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers={**self.auth, **options.pop("headers", {})}, **options)


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    cwd = tmp_path_factory.mktemp("hostile")
    if request.param == "scaled":
        database_url, redis_url = request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url")
        asyncio.run(empty_tables(database_url))
        flush(redis_url)
    else:
        database_url, redis_url = f"sqlite+aiosqlite:///{cwd / 'keel.db'}", None
        asyncio.run(migrate(database_url))
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "KEEL_JWT_SECRET": TEST_JWT_SECRET}
    with keel_serve(env, cwd) as server:
        tokens = sign_up(server.url, "mallory")
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        channel = httpx.post(f"{server.url}/api/v1/channels", json={"name": "general"}, headers=auth).json()["id"]
        yield Target(server, database_url, auth, tokens["refresh_token"], channel)
        assert "Traceback" not in server.output()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    return document


def messages_of(document: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    return {tuple(error["loc"]): error["msg"] for error in document["errors"]}


JSON_ENDPOINTS = [
    "/api/v1/auth/token",
    "/api/v1/auth/refresh",
    "/api/v1/users",
    "/api/v2/users",
    "/api/v1/users/me/password",
    "/api/v1/channels",
    "/api/v1/channels/{channel}/messages",
]


def json_post(target: Target, path: str, body: bytes | str) -> httpx.Response:
    return target.post(path.format(channel=target.channel), content=body, headers={"content-type": "application/json"})


# --- bodies ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_json_nested_a_thousand_deep_is_a_422(target: Target, path: str) -> None:
    deep = "[" * 1000 + "]" * 1000  # 2 KB
    assert list(messages_of(problem(json_post(target, path, deep), 422))) == [("body",)]
    wrapped = '{"body": ' + "[" * 1000 + "]" * 1000 + "}"
    if path != "/api/v1/auth/token":  # that one decodes into its type at once, and says it is not a string
        assert messages_of(problem(json_post(target, path, wrapped), 422)) == {
            ("body",): "The JSON is nested too deeply."
        }
    inside = '{"username": "x", "password": "y", "extra": ' + "[" * 30_000 + "]" * 30_000 + "}"
    problem(json_post(target, path, inside), 422)


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
@pytest.mark.parametrize(
    "body", [b"\xff\xfe", b'{"\xff\xfe": 1}', b'{"body": "\xff\xfe"}'], ids=["raw", "key", "value"]
)
def test_a_body_that_is_not_utf8_is_a_422(target: Target, path: str, body: bytes) -> None:
    document = problem(json_post(target, path, body), 422)
    assert document["errors"][0]["loc"] == ["body"]


def test_nul_characters_are_refused_and_nothing_is_stored(target: Target) -> None:
    before = target.get(f"/api/v1/channels/{target.channel}").json()["last_seq"]
    nul_body = target.post(f"/api/v1/channels/{target.channel}/messages", json={"body": "a\u0000b"})
    assert messages_of(problem(nul_body, 422)) == {
        ("body", "body"): "The text must not contain NUL (\\u0000) characters."
    }
    assert target.get(f"/api/v1/channels/{target.channel}").json()["last_seq"] == before
    nul_description = target.post("/api/v1/channels", json={"name": "nul-desc", "description": "a\u0000"})
    assert ("body", "description") in messages_of(problem(nul_description, 422))
    assert "nul-desc" not in [c["name"] for c in target.get("/api/v1/channels").json()]


def test_a_missing_body_says_so(target: Target) -> None:
    response = target.post("/api/v1/users", content=b"", headers={"content-type": "application/json"})
    assert messages_of(problem(response, 422)) == {("body",): "A JSON body is required."}


def test_unknown_members_are_refused(target: Target) -> None:
    response = target.post("/api/v1/auth/refresh", json={"refresh_token": target.refresh_token, "extra": 1})
    assert messages_of(problem(response, 422)) == {("body", "extra"): "This field is not allowed."}
    # the token was not spent by the refused request
    assert target.post("/api/v1/auth/refresh", json={"refresh_token": target.refresh_token}).status_code == 200


def test_a_422_names_every_bad_field(target: Target) -> None:
    # SPEC §2's example: no username, a bad email and a short password are three entries
    response = target.post("/api/v1/users", json={"email": "not-an-email", "password": "short"})
    assert messages_of(problem(response, 422)) == {
        ("body", "username"): "This field is required.",
        ("body", "email"): "An email address must have an @-sign.",
        ("body", "password"): "Must be at least 8 characters long.",
    }
    response = target.post("/api/v1/channels", json={"name": "UPPER", "description": 5, "colour": "red"})
    assert set(messages_of(problem(response, 422))) == {
        ("body", "name"),
        ("body", "description"),
        ("body", "colour"),
    }


def test_token_endpoint_errors_name_every_field_form_and_json(target: Target) -> None:
    as_json = target.post("/api/v1/auth/token", json={"username": 5})
    assert messages_of(problem(as_json, 422)) == {
        ("body", "username"): "Must be a string, not an integer.",
        ("body", "password"): "This field is required.",
    }
    as_form = target.post("/api/v1/auth/token", data={"username": "", "password": ""})
    assert messages_of(problem(as_form, 422)) == {
        ("body", "username"): "Must not be empty.",
        ("body", "password"): "Must not be empty.",
    }
    broken = target.post("/api/v1/auth/token", content=b"{", headers={"content-type": "application/json"})
    assert messages_of(problem(broken, 422)) == {("body",): "The body is not valid JSON."}


def test_an_aborted_upload_is_one_info_line(target: Target) -> None:
    host, port = target.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"username":'
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while "disconnected before its request arrived" not in target.server.output():
        assert time.monotonic() < deadline, target.server.output()[-2000:]
        time.sleep(0.05)
    lines = [json.loads(line) for line in target.server.output().splitlines() if line.startswith("{")]
    aborted = [line for line in lines if "disconnected before" in line["msg"]]
    assert [line["level"] for line in aborted] == ["info"]
    assert not [line for line in lines if line["level"] == "error"]
    assert httpx.get(f"{target.url}/healthz").status_code == 200


# --- numbers in queries and cursors -----------------------------------------------------------------------------------


def cursor(position: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/api/v1/channels", "/api/v1/channels/{channel}/messages"])
def test_an_offset_past_64_bits_is_a_422(target: Target, path: str) -> None:
    path = path.format(channel=target.channel)
    response = target.get(path, params={"offset": str(2**63)})
    assert list(messages_of(problem(response, 422))) == [("query", "offset")]  # not "ParamType.QUERY"
    assert target.get(path, params={"offset": str(MAX_INT64)}).json() == []


@pytest.mark.parametrize("position", [2**63, 2**64, -1, 1.5, "7", None])
def test_a_message_cursor_outside_64_bits_is_a_422(target: Target, position: object) -> None:
    response = target.get(f"/api/v2/channels/{target.channel}/messages", params={"cursor": cursor(position)})
    assert problem(response, 422)["code"] == "pagination.invalid_cursor"


@pytest.mark.parametrize("position", ["a\u0000", "UPPER", "x" * 65, 5])
def test_a_channel_cursor_must_hold_a_channel_name(target: Target, position: object) -> None:
    response = target.get("/api/v2/channels", params={"cursor": cursor(position)})
    assert problem(response, 422)["code"] == "pagination.invalid_cursor"


def test_seq_is_64_bit(target: Target) -> None:
    # a channel past 2**31 messages: PostgreSQL's seq was a 32-bit integer
    channel = target.post("/api/v1/channels", json={"name": f"busy-{uuid.uuid4().hex[:8]}"}).json()["id"]
    start = 2**31 + 5

    async def jump() -> None:
        engine = db.create_engine(target.database_url, pool_size=1)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE channels SET last_seq = :seq WHERE id = :id"),
                    {"seq": start, "id": channel if "postgresql" in target.database_url else uuid.UUID(channel).hex},
                )
        finally:
            await engine.dispose()

    asyncio.run(jump())
    posted = target.post(f"/api/v1/channels/{channel}/messages", json={"body": "after two billion"})
    assert posted.status_code == 201, posted.text
    assert posted.json()["seq"] == start + 1
    page = target.get(f"/api/v2/channels/{channel}/messages", params={"cursor": cursor(start + 2)})
    assert [m["seq"] for m in page.json()["data"]] == [start + 1]


# --- headers ----------------------------------------------------------------------------------------------------------


def comparable(headers: httpx.Headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in ("date", "x-request-id")}


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/healthz", {}),
        ("/api/v1/public", {}),
        ("/api/v1/channels/{channel}", {}),
        ("/api/v1/channels", {"Accept-Encoding": "gzip"}),
        ("/api-docs/openapi.json", {"Accept-Encoding": "br"}),
        ("/api/v1/users/me", {"Authorization": "Bearer nonsense"}),
        ("/no/such/route", {}),
    ],
)
def test_head_answers_as_get_does_without_a_body(target: Target, path: str, extra: dict[str, str]) -> None:
    path = path.format(channel=target.channel)
    get = target.get(path, headers=extra)
    head = httpx.head(f"{target.url}{path}", headers={**target.auth, **extra})
    assert head.status_code == get.status_code
    assert comparable(head.headers) == comparable(get.headers)
    assert head.content == b""


def test_head_on_an_event_stream_answers_at_once(target: Target) -> None:
    started = time.monotonic()
    head = httpx.head(f"{target.url}/events", params={"channel": target.channel}, headers=target.auth, timeout=5)
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""
    assert time.monotonic() - started < 2


def test_405_allows_head_wherever_get_works(target: Target) -> None:
    response = httpx.delete(f"{target.url}/api/v1/public")
    problem(response, 405)
    assert sorted(response.headers["allow"].split(", ")) == ["GET", "HEAD", "OPTIONS"]
    assert "HEAD" not in httpx.put(f"{target.url}/api/v1/auth/token").headers["allow"].split(", ")


@pytest.mark.parametrize("path", ["/api/v1/public", "/api/v1/protected", "/events?channel={channel}"])
def test_two_authorization_headers_are_a_400(target: Target, path: str) -> None:
    token = target.auth["Authorization"]
    headers = [("Authorization", token), ("Authorization", "Bearer someone-else")]
    response = httpx.get(f"{target.url}{path.format(channel=target.channel)}", headers=headers)
    assert problem(response, 400)["code"] == "http.ambiguous_credentials"


async def test_two_authorization_headers_refuse_a_websocket(target: Target) -> None:
    from tests.realtime.conftest import refused

    token = target.auth["Authorization"]
    url = target.url.replace("http://", "ws://") + "/ws"
    status, document = await refused(url, additional_headers=[("Authorization", token), ("Authorization", token)])
    assert (status, document["code"]) == (400, "http.ambiguous_credentials")


# --- logs -------------------------------------------------------------------------------------------------------------


async def test_sql_errors_never_carry_bind_parameters(target: Target) -> None:
    engine = db.create_engine(target.database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as error:
                await connection.execute(text("INSERT INTO no_such_table VALUES (:v)"), {"v": "alice@secret.example"})
    finally:
        await engine.dispose()
    assert "alice@secret.example" not in str(error.value)


# --- properties -------------------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "username",
        "email",
        "password",
        "refresh_token",
        "current_password",
        "new_password",
        "name",
        "description",
        "body",
        "grant_type",
        "extra",
    ]
)
_bodies = st.one_of(
    _json,
    st.dictionaries(_fields, _json, max_size=5),
    st.dictionaries(_fields, st.text(max_size=40), max_size=5),
)
_query_values = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.sampled_from(["0", "-1", str(2**63), str(2**64), "1e30", "NaN", "%00", "\u0000", cursor(2**63)]),
)
_queries = st.dictionaries(st.sampled_from(["limit", "offset", "cursor", "channel", "x"]), _query_values, max_size=3)


def _operations(target: Target) -> list[tuple[str, str]]:
    document = httpx.get(f"{target.url}/api-docs/openapi.json").json()
    return [
        (method.upper(), path.replace("{channel_id}", target.channel))
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete") and not path.endswith("/auth/logout")  # keep the session
    ]


@pytest.fixture(scope="module")
def operations(target: Target) -> list[tuple[str, str]]:
    return _operations(target)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_json_bodies_never_cause_a_500(target: Target, operations: list[tuple[str, str]], data: Any) -> None:
    method, path = data.draw(st.sampled_from([op for op in operations if op[0] != "GET"]))
    body = data.draw(_bodies)
    response = httpx.request(method, f"{target.url}{path}", json=body, headers=target.auth, timeout=10)
    assert response.status_code < 500, (method, path, body, response.text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_query_strings_never_cause_a_500(
    target: Target, operations: list[tuple[str, str]], data: Any
) -> None:
    method, path = data.draw(st.sampled_from(operations))
    query = data.draw(_queries)
    response = httpx.request(method, f"{target.url}{path}", params=query, headers=target.auth, timeout=10)
    assert response.status_code < 500, (method, path, query, response.text)


def test_the_property_tests_reach_every_operation(operations: list[tuple[str, str]]) -> None:
    paths = {path for _, path in operations}
    assert any(path.endswith("/messages") for path in paths)
    assert any(path.endswith("/auth/token") for path in paths)
    assert len(operations) >= 20
