"""SPEC §6 caching on both backends: strong ETags, 304, hot reads from the cache, a read after a write."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import text

from keel import db
from keel.settings import Settings
from tests.factories import Client, make_channel, post

IDENTITY = {"Accept-Encoding": "identity"}
# every read SPEC §6 tags: a channel, the lists, first pages (cached) and later pages (tagged, read through)
READS = [
    "/api/v1/channels/{id}",
    "/api/v2/channels/{id}",
    "/api/v1/channels",
    "/api/v2/channels",
    "/api/v1/channels/{id}/messages",
    "/api/v2/channels/{id}/messages",
    "/api/v1/channels/{id}/messages?limit=1&offset=1",
    "/api/v2/channels?limit=1&cursor=ImEi",  # after the name "a"
]


def newest_seq(body: Any) -> int:
    """The highest seq a read shows: a message's seq, a channel's last_seq, across lists and envelopes."""
    items = body["data"] if isinstance(body, dict) and "data" in body else body
    items = items if isinstance(items, list) else [items]
    return max(int(item.get("last_seq", item.get("seq", 0))) for item in items)


@pytest.fixture
async def channel(client: Client, auth: dict[str, str]) -> dict[str, Any]:
    channel = await make_channel(client, auth, "general")
    for body in ("one", "two"):
        await post(client, auth, channel["id"], body)
    return channel


@pytest.mark.parametrize("path", READS)
async def test_reads_carry_a_strong_etag_and_a_matching_if_none_match_gets_304(
    client: Client, auth: dict[str, str], channel: dict[str, Any], path: str
) -> None:
    url = path.format(id=channel["id"])
    first = await client.get(url, headers={**auth, **IDENTITY})
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert first.headers["cache-control"] == "private, no-cache"

    for if_none_match in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        again = await client.get(url, headers={**auth, **IDENTITY, "If-None-Match": if_none_match})
        assert again.status_code == 304, if_none_match
        assert again.content == b""
        assert again.headers["etag"] == etag

    other = await client.get(url, headers={**auth, **IDENTITY, "If-None-Match": '"stale"'})
    assert other.status_code == 200
    assert (other.headers["etag"], other.json()) == (etag, first.json())


@pytest.mark.parametrize("path", READS[:6])
async def test_a_read_after_a_write_sees_the_write(
    client: Client, auth: dict[str, str], channel: dict[str, Any], path: str
) -> None:
    url = path.format(id=channel["id"])
    before = await client.get(url, headers=auth)
    assert (await client.get(url, headers={**auth, "If-None-Match": before.headers["etag"]})).status_code == 304

    await post(client, auth, channel["id"], "three")

    after = await client.get(url, headers={**auth, "If-None-Match": before.headers["etag"]})
    assert after.status_code == 200
    assert after.headers["etag"] != before.headers["etag"]
    assert (newest_seq(before.json()), newest_seq(after.json())) == (2, 3)


async def test_a_new_channel_shows_in_the_next_list(client: Client, auth: dict[str, str]) -> None:
    await make_channel(client, auth, "general")
    for version in ("v1", "v2"):
        assert (await client.get(f"/api/{version}/channels", headers=auth)).status_code == 200

    await make_channel(client, auth, "another")

    listed = (await client.get("/api/v1/channels", headers=auth)).json()
    paged = (await client.get("/api/v2/channels", headers=auth)).json()
    assert [c["name"] for c in listed] == [c["name"] for c in paged["data"]] == ["another", "general"]


async def test_hot_reads_come_from_the_cache_until_a_write(
    client: Client, auth: dict[str, str], channel: dict[str, Any], settings: Settings
) -> None:
    url = f"/api/v1/channels/{channel['id']}"
    assert (await client.get(url, headers=auth)).json()["description"] == ""
    # a change behind keel's back: only a read that skips the database keeps showing the old row
    engine = db.create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE channels SET description = 'changed' WHERE name = 'general'"))
    finally:
        await engine.dispose()
    assert (await client.get(url, headers=auth)).json()["description"] == ""
    uncached = await client.get("/api/v1/channels?limit=1", headers=auth)  # a key not cached before
    assert uncached.json()[0]["description"] == "changed"

    await post(client, auth, channel["id"], "three")  # any write to the channel invalidates its scope

    assert (await client.get(url, headers=auth)).json()["description"] == "changed"


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_an_encoded_body_has_its_own_etag(client: Client, auth: dict[str, str], encoding: str) -> None:
    channel = await make_channel(client, auth, "general")
    for i in range(10):  # a page well over the 1 KiB compression threshold
        await post(client, auth, channel["id"], f"message {i} " + "x" * 100)
    url = f"/api/v1/channels/{channel['id']}/messages"
    plain = await client.get(url, headers={**auth, **IDENTITY})
    encoded = await client.get(url, headers={**auth, "Accept-Encoding": encoding})
    assert encoded.headers["content-encoding"] == encoding
    assert encoded.headers["etag"] == plain.headers["etag"][:-1] + f'-{encoding}"'
    assert encoded.json() == plain.json()

    for tag, expected in ((encoded.headers["etag"], 304), (plain.headers["etag"], 304), ('"other-br"', 200)):
        again = await client.get(url, headers={**auth, "Accept-Encoding": encoding, "If-None-Match": tag})
        assert again.status_code == expected, tag
        if expected == 304:  # a 304 confirms the variant the client holds
            assert again.headers["etag"] == tag
    # the encoded variant's tag does not validate the identity variant
    other = await client.get(url, headers={**auth, **IDENTITY, "If-None-Match": encoded.headers["etag"]})
    assert other.status_code == 200


async def test_openapi_documents_the_validators_and_304(client: Client) -> None:
    paths = (await client.get("/api-docs/openapi.json")).json()["paths"]
    for version in ("v1", "v2"):
        for path in ("/channels", "/channels/{channel_id}", "/channels/{channel_id}/messages"):
            responses = paths[f"/api/{version}{path}"]["get"]["responses"]
            assert "304" in responses, path
            assert set(responses["200"]["headers"]) >= {"ETag", "Cache-Control"}, path
