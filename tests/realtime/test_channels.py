"""Channels and messages over REST, on both backends."""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import Client, make_channel, post


async def test_channels_need_a_token(client: Client) -> None:
    assert (await client.get("/api/v1/channels")).status_code == 401
    assert (await client.post("/api/v1/channels", json={"name": "general"})).status_code == 401


async def test_create_and_read_a_channel(client: Client, auth: dict[str, str]) -> None:
    channel = await make_channel(client, auth, "general", "Anything goes")
    assert set(channel) == {"id", "name", "description", "created_at", "last_seq"}
    assert (channel["name"], channel["description"], channel["last_seq"]) == ("general", "Anything goes", 0)
    for version in ("v1", "v2"):
        read = await client.get(f"/api/{version}/channels/{channel['id']}", headers=auth)
        assert read.json() == channel


async def test_duplicate_names_conflict(client: Client, auth: dict[str, str]) -> None:
    await make_channel(client, auth, "general")
    response = await client.post("/api/v1/channels", json={"name": "general"}, headers=auth)
    assert response.status_code == 409
    assert response.json()["code"] == "realtime.channel_name_taken"


@pytest.mark.parametrize("name", ["", "UPPER", "has space", "x" * 65, "émoji"])
async def test_channel_names_are_validated(client: Client, auth: dict[str, str], name: str) -> None:
    response = await client.post("/api/v1/channels", json={"name": name}, headers=auth)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "name"]


async def test_unknown_channel_is_404(client: Client, auth: dict[str, str]) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in (
        ("GET", f"/api/v1/channels/{missing}"),
        ("GET", f"/api/v1/channels/{missing}/messages"),
        ("GET", f"/api/v2/channels/{missing}/messages"),
    ):
        response = await client.request(method, path, headers=auth)
        assert response.status_code == 404
        assert response.json()["code"] == "realtime.channel_not_found"
    posted = await client.post(f"/api/v1/channels/{missing}/messages", json={"body": "hi"}, headers=auth)
    assert posted.status_code == 404


async def test_channels_list_in_byte_order(client: Client, auth: dict[str, str]) -> None:
    names = ["b", "a-z", "a_z", "a0", "z", "a", "_x", "-x"]
    for name in names:
        await make_channel(client, auth, name)
    listed = await client.get("/api/v1/channels", headers=auth)
    assert [c["name"] for c in listed.json()] == sorted(names, key=str.encode)
    paged = await client.get("/api/v1/channels?limit=3&offset=2", headers=auth)
    assert [c["name"] for c in paged.json()] == sorted(names, key=str.encode)[2:5]


async def test_v2_channel_list_is_a_cursor_envelope(client: Client, auth: dict[str, str]) -> None:
    names = [f"room-{i}" for i in range(5)]
    for name in names:
        await make_channel(client, auth, name)
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/api/v2/channels?{query}", headers=auth)).json()
        assert set(page) == {"data", "next_cursor"}
        seen += [c["name"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names


async def test_messages_get_gapless_seq_and_list_newest_first(client: Client, auth: dict[str, str]) -> None:
    channel = await make_channel(client, auth, "general")
    posted = [await post(client, auth, channel["id"], f"message {i}") for i in range(1, 6)]
    assert [m["seq"] for m in posted] == [1, 2, 3, 4, 5]
    first = posted[0]
    assert set(first) == {"id", "channel_id", "seq", "author", "body", "created_at"}
    assert first["author"]["username"] == "ada"
    assert first["channel_id"] == channel["id"]
    v1 = (await client.get(f"/api/v1/channels/{channel['id']}/messages?limit=3", headers=auth)).json()
    assert [m["seq"] for m in v1] == [5, 4, 3]
    assert v1[0] == posted[4]
    read = (await client.get(f"/api/v1/channels/{channel['id']}", headers=auth)).json()
    assert read["last_seq"] == 5


async def test_v2_messages_page_by_cursor(client: Client, auth: dict[str, str]) -> None:
    channel = await make_channel(client, auth, "general")
    for i in range(5):
        await post(client, auth, channel["id"], f"message {i}")
    url = f"/api/v2/channels/{channel['id']}/messages"
    first = (await client.get(f"{url}?limit=2", headers=auth)).json()
    second = (await client.get(f"{url}?limit=2&cursor={first['next_cursor']}", headers=auth)).json()
    third = (await client.get(f"{url}?limit=2&cursor={second['next_cursor']}", headers=auth)).json()
    assert [[m["seq"] for m in page["data"]] for page in (first, second, third)] == [[5, 4], [3, 2], [1]]
    assert third["next_cursor"] is None
    bad = await client.get(f"{url}?cursor=not-a-cursor", headers=auth)
    assert bad.status_code == 422
    assert bad.json()["code"] == "pagination.invalid_cursor"


@pytest.mark.parametrize("body", ["", "x" * 4001])
async def test_message_bodies_are_1_to_4000_characters(client: Client, auth: dict[str, str], body: str) -> None:
    channel = await make_channel(client, auth, "general")
    response = await client.post(f"/api/v1/channels/{channel['id']}/messages", json={"body": body}, headers=auth)
    assert response.status_code == 422
    await post(client, auth, channel["id"], "x" * 4000)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "limit=abc"])
async def test_list_parameters_are_validated(client: Client, auth: dict[str, str], query: str) -> None:
    assert (await client.get(f"/api/v1/channels?{query}", headers=auth)).status_code == 422


async def test_concurrent_writers_get_every_seq_exactly_once(client: Client, auth: dict[str, str]) -> None:
    channel = await make_channel(client, auth, "busy")
    results = await asyncio.gather(
        *(
            client.post(f"/api/v1/channels/{channel['id']}/messages", json={"body": f"m{i}"}, headers=auth)
            for i in range(40)
        )
    )
    assert all(r.status_code == 201 for r in results), [r.text for r in results if r.status_code != 201]
    assert sorted(r.json()["seq"] for r in results) == list(range(1, 41))
