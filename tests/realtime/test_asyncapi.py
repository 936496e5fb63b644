"""The AsyncAPI document (SPEC §3): valid AsyncAPI 3.0, served as built, and kept to by a live `/ws` and `/events`."""

from __future__ import annotations

import copy
import json
import typing
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from jsonschema import Draft7Validator, FormatChecker
from litestar import Litestar
from litestar.testing import AsyncTestClient
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from keel.main import VERSION
from keel.realtime import asyncapi, frames
from tests.conftest import IN_CI
from tests.realtime.conftest import Event, EventReader, Live

OFFICIAL_SCHEMA = Path(__file__).parents[2] / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
Json = dict[str, Any]


@pytest.fixture
def document() -> Json:
    built: Json = json.loads(msgspec.json.encode(asyncapi.build(VERSION)))
    return built


def official_validator() -> Draft7Validator:
    if not OFFICIAL_SCHEMA.exists():
        reason = f"{OFFICIAL_SCHEMA} is missing; `make test` installs it (npm ci)"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return Draft7Validator(json.loads(OFFICIAL_SCHEMA.read_text()))


def closed(schema: Any) -> Any:
    """`schema` with every object that lists its properties closed to others: an undocumented member fails too."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


class Contract:
    """One channel's messages of the document, by direction, as validators over its (closed) schemas."""

    def __init__(self, document: Json, channel: str) -> None:
        self.components = {"schemas": closed(document["components"]["schemas"])}
        messages: Json = document["channels"][channel]["messages"]
        prefix = f"#/channels/{channel}/messages/"

        def resolve(ref: Json) -> Json:
            assert ref["$ref"].startswith(prefix)
            message: Json = messages[ref["$ref"].removeprefix(prefix)]
            return message

        self.inbound: Json = {}  # what the server receives
        self.outbound: Json = {}  # what it sends: its own operations' messages and every reply
        for operation in document["operations"].values():
            if operation["channel"]["$ref"] != f"#/channels/{channel}":
                continue
            side = self.inbound if operation["action"] == "receive" else self.outbound
            side.update((m["name"], m) for m in map(resolve, operation["messages"]))
            self.outbound.update((m["name"], m) for m in map(resolve, operation.get("reply", {}).get("messages", [])))

    def validator(self, schema: Json) -> Draft7Validator:
        root = {"components": self.components, "allOf": [closed(schema)]}  # the components' refs resolve in root
        return Draft7Validator(root, format_checker=FormatChecker())

    def matches(self, side: Json, part: str, value: object) -> list[str]:
        """The names of the messages on `side` whose `part` (payload or headers) `value` is valid against."""
        return [name for name, message in side.items() if self.validator(message[part]).is_valid(value)]


def test_the_document_is_valid_asyncapi_3(document: Json) -> None:
    validator = official_validator()
    assert [error.message for error in validator.iter_errors(document)] == []
    # and the official schema checks deep down: an OpenAPI-style discriminator in a frame schema is refused
    broken = copy.deepcopy(document)
    broken["components"]["schemas"]["Subscribe"]["discriminator"] = {"propertyName": "type"}
    assert not validator.is_valid(broken)


def test_every_frame_is_a_message_in_its_direction(document: Json) -> None:
    ws = Contract(document, "ws")
    assert {m["payload"]["$ref"].rsplit("/", 1)[1] for m in ws.inbound.values()} == {
        frame.__name__ for frame in typing.get_args(frames.ClientFrame)
    }
    assert {m["payload"]["$ref"].rsplit("/", 1)[1] for m in ws.outbound.values()} == {
        frame.__name__ for frame in typing.get_args(frames.ServerFrame)
    }
    assert ws.inbound.keys() | ws.outbound.keys() == document["channels"]["ws"]["messages"].keys()
    assert document["channels"]["ws"]["x-close-codes"].keys() == {"1001", "1009", "1011", "1012", "1013", "4401"}


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_the_served_document_is_the_built_one(client: AsyncTestClient[Litestar], document: Json) -> None:
    response = await client.get("/api-docs/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-cache"
    assert response.json() == document
    etag = response.headers["etag"]
    revalidated = await client.get("/api-docs/asyncapi.json", headers={"If-None-Match": etag})
    assert (revalidated.status_code, revalidated.content) == (304, b"")
    head = await client.head("/api-docs/asyncapi.json")
    assert (head.status_code, head.content) == (200, b"")
    openapi = (await client.get("/api-docs/openapi.json")).json()
    assert "(/api-docs/asyncapi.json)" in openapi["info"]["description"]  # Swagger UI shows the link


async def test_a_live_websocket_session_keeps_to_the_document(live: Live, document: Json) -> None:
    ws_contract = Contract(document, "ws")
    received: list[Json] = []

    async def exchange(ws: ClientConnection, frame: Json | str, replies: int) -> list[Json]:
        if isinstance(frame, dict):
            matched = ws_contract.matches(ws_contract.inbound, "payload", frame)
            # a frame the server serves is exactly one client message; one it refuses is none
            assert len(matched) == (0 if frame.get("ref") == "refused" else 1), (frame, matched)
        await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        got = [json.loads(await ws.recv()) for _ in range(replies)]
        received.extend(got)
        return got

    channel = live.channel
    live.post("before")
    async with live.socket() as ws:
        await exchange(ws, {"type": "subscribe", "channel": channel, "since": 0, "ref": "s"}, 2)
        await exchange(ws, {"type": "publish", "channel": channel, "body": "hi", "ref": 7}, 2)
        await exchange(ws, {"type": "publish", "channel": channel, "body": "no ref"}, 2)
        await exchange(ws, {"type": "ping"}, 1)
        await exchange(ws, {"type": "ping", "ref": "p"}, 1)
        live.post("over rest")
        received.append(json.loads(await ws.recv()))
        await exchange(ws, "not json", 1)
        await exchange(ws, {"type": "shout", "ref": "refused"}, 1)
        await exchange(ws, {"type": "publish", "channel": channel, "body": "", "ref": "refused"}, 1)
        await exchange(ws, {"type": "subscribe", "channel": channel, "extra": 1, "ref": "refused"}, 1)
        unknown = "00000000-0000-4000-8000-000000000000"
        await exchange(ws, {"type": "subscribe", "channel": unknown, "ref": "u"}, 1)
        await exchange(ws, {"type": "unsubscribe", "channel": channel}, 1)
        with pytest.raises(ConnectionClosed) as too_big:
            await exchange(ws, "x" * (70 * 1024), 1)
    kinds = [frame["type"] for frame in received]
    assert {"subscribed", "published", "message", "pong", "error", "unsubscribed"} <= set(kinds), kinds
    assert [frame["code"] for frame in received if frame["type"] == "error"] == [
        "bad_frame",
        "unknown_type",
        "invalid",
        "invalid",
        "not_found",
    ]
    for frame in received:
        matched = ws_contract.matches(ws_contract.outbound, "payload", frame)
        assert len(matched) == 1, (frame, matched)
    close_codes = document["channels"]["ws"]["x-close-codes"]
    assert too_big.value.rcvd is not None
    assert str(too_big.value.rcvd.code) in close_codes

    async with live.socket() as ws:
        live.log_out()
        with pytest.raises(ConnectionClosed) as revoked:
            await ws.recv()
    assert revoked.value.rcvd is not None
    assert str(revoked.value.rcvd.code) in close_codes


def test_a_live_event_stream_keeps_to_the_document(live: Live, document: Json) -> None:
    sse = Contract(document, "events")
    (operation,) = (op for op in document["operations"].values() if op["channel"]["$ref"] == "#/channels/events")
    query_schema = sse.validator(operation["bindings"]["http"]["query"])
    other = live.new_channel("other")
    live.post("before")

    def check(event: Event) -> None:
        fields = {name: value for name in ("event", "id", "retry") if (value := getattr(event, name)) is not None}
        (name,) = sse.matches(sse.outbound, "headers", fields)
        payload = sse.outbound[name].get("payload")
        if payload is None:
            assert event.data is None
        else:
            assert sse.validator(payload).is_valid(event.message), event.message

    def stream(query: Json, count: int, *posts: tuple[str, str]) -> list[Event]:
        query_schema.validate(query)
        with httpx.stream("GET", f"{live.url}/events", params=query, timeout=10) as response:
            assert response.status_code == 200, response.read()
            reader = EventReader(response)
            opening = reader.next()
            assert opening.retry is not None
            for body, channel in posts:
                live.post(body, channel=channel)
            got = [opening, *(reader.next() for _ in range(count))]
        for event in got:
            check(event)
        return got

    first = stream(
        {"channel": [live.channel, other], "ticket": live.ticket()}, 2, ("one", live.channel), ("two", other)
    )
    assert [event.message["body"] for event in first[1:]] == ["one", "two"]
    resumed = stream({"channel": [live.channel, other], "ticket": live.ticket(), "last_event_id": first[1].id}, 1)
    assert resumed[1].message["body"] == "two"
    # what the server refuses, the document refuses too
    assert not query_schema.is_valid({"channel": []})
    assert not query_schema.is_valid({"channel": [live.channel], "last_event_id": "garbage"})
