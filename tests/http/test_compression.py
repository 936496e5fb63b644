from __future__ import annotations

import gzip

import brotli
import msgspec
import pytest
import zstandard
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.http import compression
from keel.http.compression import choose_encoding

Client = AsyncTestClient[Litestar]
DECODERS = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1.0, br;q=0.5, zstd;q=0.1", "gzip"),
        ("br;q=0.9, gzip;q=0.8", "br"),
        ("*", "zstd"),
        ("zstd;q=0, *;q=0.5", "br"),
        ("identity", None),
        ("deflate", None),
        ("gzip;q=0", None),
        ("gzip;q=junk", None),
    ],
)
def test_choose_encoding_honours_q_values(header: str, chosen: str | None) -> None:
    assert choose_encoding(header) == chosen


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_large_bodies_are_compressed(client: Client, encoding: str) -> None:
    # read raw bytes: the test client would otherwise undo the encoding it understands
    async with client.stream("GET", "/test/big", headers={"accept-encoding": encoding}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == encoding
    assert "Accept-Encoding" in response.headers["vary"]
    assert int(response.headers["content-length"]) == len(raw) < 1000
    assert msgspec.json.decode(DECODERS[encoding](raw)) == {"text": "keel " * 1000}


async def test_no_compression_without_accept_encoding(client: Client) -> None:
    response = await client.get("/test/big", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in response.headers
    assert response.json() == {"text": "keel " * 1000}


async def test_small_bodies_are_not_compressed(client: Client) -> None:
    response = await client.get("/api/v1/public", headers={"accept-encoding": "gzip, br, zstd"})
    assert len(response.content) < 1024
    assert "content-encoding" not in response.headers


async def test_event_streams_are_never_compressed(client: Client) -> None:
    async with client.stream("GET", "/test/events", headers={"accept-encoding": "gzip, br, zstd"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in response.headers
    assert raw.count(b"data: " + b"x" * 2000) == 3


async def test_streamed_bodies_stay_streamed_and_compressed(client: Client) -> None:
    async with client.stream("GET", "/test/stream", headers={"accept-encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert "content-length" not in response.headers
    assert gzip.decompress(raw) == b"".join(b"line %d\n" % i for i in range(500))


def test_encoded_bodies_compress_a_tagged_body_once_and_stay_within_their_budget() -> None:
    compressed: list[bytes] = []
    real = compression.compress_whole

    def counting(encoding: str, body: bytes) -> bytes:
        compressed.append(body)
        return real(encoding, body)

    bodies = compression.EncodedBodies(budget=100)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compression, "compress_whole", counting)
        first = bodies.get(b'"a"', "br", b"x" * 5000)
        assert bodies.get(b'"a"', "br", b"x" * 5000) == first
        assert len(compressed) == 1  # found by its tag the second time
        assert DECODERS["gzip"](bodies.get(b'"a"', "gzip", b"x" * 5000)) == b"x" * 5000  # another coding: its own
        for n in range(20):  # each ~20 bytes encoded: the oldest go once the budget is spent
            bodies.get(f'"{n}"'.encode(), "gzip", bytes([n]) * 2000)
        assert len(compressed) == 22
        bodies.get(b'"a"', "br", b"x" * 5000)
        assert len(compressed) == 23  # evicted, so compressed again
        assert sum(map(len, bodies._bodies.values())) <= 100


async def test_a_cached_read_is_served_encoded_and_decodes_to_its_body(client: Client) -> None:
    from tests.factories import bearer, log_in, post, register

    await register(client, "ada")
    auth = bearer(await log_in(client))
    channel = (await client.post("/api/v1/channels", json={"name": "big"}, headers=auth)).json()["id"]
    for n in range(20):
        await post(client, auth, channel, f"message {n} " + "x" * 80)
    plain = await client.get(f"/api/v2/channels/{channel}/messages", headers={**auth, "Accept-Encoding": "identity"})
    for _ in range(2):  # the second is served from the encoded bodies, and must be the same bytes
        encoded = await client.get(f"/api/v2/channels/{channel}/messages", headers={**auth, "Accept-Encoding": "br"})
        assert encoded.headers["content-encoding"] == "br"
        assert encoded.headers["etag"] == plain.headers["etag"][:-1] + '-br"'
        assert msgspec.json.decode(encoded.content) == plain.json()
