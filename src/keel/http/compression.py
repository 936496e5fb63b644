"""Response compression: zstd, br or gzip as the client prefers, for bodies over 1 KiB, never event streams.

Ours rather than Litestar's CompressionMiddleware, which offers one backend plus a gzip fallback, matches
`Accept-Encoding` by substring (ignoring q-values) and would buffer a `text/event-stream` (SPEC §2).

A strong ETag names one representation, and an encoded body is another one (RFC 9110 §8.8.3), so an encoded
response's ETag gets the coding as a suffix (`"abc"` becomes `"abc-br"`, as Apache does). The app never sees the
suffix: it is taken off the request's If-None-Match for the coding chosen now, and put back on a 304's ETag.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import brotli
import zstandard
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

MINIMUM_SIZE: Final = 1024
# preferred first when the client weighs them equally: zstd and br compress JSON better than gzip, and faster
ENCODINGS: Final = ("zstd", "br", "gzip")
_NEVER: Final = (
    b"text/event-stream",
    b"image/",
    b"video/",
    b"audio/",
    b"application/zip",
    b"application/gzip",
    b"font/woff",
)


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self) -> None:
        self._b = brotli.Compressor(quality=4)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._b.process(data))

    def flush(self) -> bytes:
        return bytes(self._b.flush())

    def finish(self) -> bytes:
        return bytes(self._b.finish())


class _Zstd:
    def __init__(self) -> None:
        self._z = zstandard.ZstdCompressor(level=3).compressobj()

    def compress(self, data: bytes) -> bytes:
        return bytes(self._z.compress(data))

    def flush(self) -> bytes:
        return bytes(self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))

    def finish(self) -> bytes:
        return bytes(self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))


COMPRESSORS: Final[dict[str, Callable[[], Compressor]]] = {"zstd": _Zstd, "br": _Brotli, "gzip": _Gzip}
_CODINGS: Final = {encoding: encoding.encode() for encoding in ENCODINGS}  # Content-Encoding's value
_SUFFIXES: Final = {encoding: b"-" + encoding.encode() + b'"' for encoding in ENCODINGS}  # an encoded ETag's end
_NONE_UNSUFFIXED: Final[frozenset[bytes]] = frozenset()


def compress_whole(encoding: str, body: bytes) -> bytes:
    compressor = COMPRESSORS[encoding]()
    return compressor.compress(body) + compressor.finish()


class EncodedBodies:
    """Compressed whole bodies by (strong ETag, coding), oldest out past `budget` bytes.

    A strong ETag is a hash of the body's bytes (keel.http.caching), and the compressors are deterministic, so the
    pair names one encoded body. The cached reads are the same bytes request after request: compressing a 50-message
    page with br took ~200 µs of a hit's ~390 (in-process, 2026-12-04), i.e. half of it. Bodies without an ETag are
    compressed every time, as before.
    """

    def __init__(self, budget: int = 8 * 1024 * 1024) -> None:
        self._budget = budget
        self._size = 0
        self._bodies: dict[tuple[bytes, str], bytes] = {}  # insertion-ordered: the first is the oldest

    def get(self, etag: bytes, encoding: str, body: bytes) -> bytes:
        key = (etag, encoding)
        encoded = self._bodies.get(key)
        if encoded is None:
            encoded = compress_whole(encoding, body)
            if len(encoded) <= self._budget:
                self._bodies[key] = encoded
                self._size += len(encoded)
                while self._size > self._budget:
                    self._size -= len(self._bodies.pop(next(iter(self._bodies))))
        return encoded


def choose_encoding(accept_encoding: str) -> str | None:
    """The best of ENCODINGS by the client's q-values (RFC 9110 §12.5.3), or None."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name.strip().lower()] = q
    best, best_q = None, 0.0
    for encoding in ENCODINGS:
        q = weights.get(encoding, weights.get("*", 0.0))
        if q > best_q:
            best, best_q = encoding, q
    return best


@functools.lru_cache(maxsize=256)
def _encoding_for(accept_encoding: bytes) -> str | None:
    """choose_encoding of a raw header, remembered: clients send a handful of distinct values, and parsing one cost
    ~3 % of a request's CPU (bench/stack_cpu.py's cProfile, 2026-12-04). Bounded, so odd values cannot grow it."""
    return choose_encoding(accept_encoding.decode("latin-1"))


class CompressionMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.encoded = EncodedBodies()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        accept = if_none_match = None
        for name, value in scope["headers"]:  # one pass for both (a generator per header cost more than the loop)
            if name == b"accept-encoding":
                accept = accept or value
            elif name == b"if-none-match":
                if_none_match = value
        encoding = _encoding_for(accept) if accept else None
        if encoding is None:
            await self.app(scope, receive, send)
            return

        suffix = _SUFFIXES[encoding]
        unsuffixed = _unsuffix_if_none_match(scope, suffix) if if_none_match else _NONE_UNSUFFIXED
        start: HTTPResponseStartEvent | None = None
        compressor: Compressor | None = None
        passthrough = False

        async def compressing_send(message: Message) -> None:
            nonlocal start, compressor, passthrough
            if passthrough:
                await send(message)
                return
            if message["type"] == "http.response.start":
                if message["status"] == 304 and unsuffixed:
                    # the client holds the encoded variant: confirm that one
                    message["headers"] = _suffix_etag(message.get("headers", ()), suffix, only=unsuffixed)
                if not _compressible(message):
                    passthrough = True
                    await send(message)
                    return
                start = message  # held until the first body tells whether it is worth compressing
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body, more = message.get("body", b""), message.get("more_body", False)
            if compressor is None:
                if not more and len(body) < MINIMUM_SIZE:
                    passthrough = True
                    await send(start)
                    await send(message)
                    return
                etag = _strong_etag(start.get("headers", ()))
                headers = [(k, v) for k, v in _suffix_etag(start.get("headers", ()), suffix) if k != b"content-length"]
                headers += [(b"content-encoding", _CODINGS[encoding]), (b"vary", b"Accept-Encoding")]
                start["headers"] = headers
                if not more:
                    # a whole body: compressed in one go (or found, by its ETag), and its length said
                    data = compress_whole(encoding, body) if etag is None else self.encoded.get(etag, encoding, body)
                    headers.append((b"content-length", str(len(data)).encode()))
                    await send(start)
                    await send(HTTPResponseBodyEvent(type="http.response.body", body=data, more_body=False))
                    return
                compressor = COMPRESSORS[encoding]()
                await send(start)
            # a streamed body stays streamed: every chunk is flushed as it goes
            data = compressor.compress(body) + (compressor.flush() if more else compressor.finish())
            await send(HTTPResponseBodyEvent(type="http.response.body", body=data, more_body=more))

        await self.app(scope, receive, compressing_send)


def _strong_etag(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"etag":
            return value if value.startswith(b'"') else None  # a weak tag may name several bodies
    return None


def _compressible(start: HTTPResponseStartEvent) -> bool:
    if start["status"] < 200 or start["status"] in (204, 304):
        return False
    for name, value in start.get("headers", ()):
        if name == b"content-encoding":
            return False
        if name == b"content-type" and value.lower().startswith(_NEVER):
            return False
    return True


def _unsuffix_if_none_match(scope: Scope, suffix: bytes) -> frozenset[bytes]:
    """Take `suffix` off the If-None-Match tags that carry it; returns those tags as the app will see them."""
    for name, value in scope["headers"]:
        if name == b"if-none-match" and suffix in value:
            tags = [tag.strip() for tag in value.split(b",")]
            bare = [tag[: -len(suffix)] + b'"' if tag.endswith(suffix) else tag for tag in tags]
            rewritten = (name, b", ".join(bare))
            scope["headers"] = [rewritten if header[0] == name else header for header in scope["headers"]]
            return frozenset(b.removeprefix(b"W/") for b, tag in zip(bare, tags, strict=True) if b != tag)
    return frozenset()


def _suffix_etag(
    headers: Iterable[tuple[bytes, bytes]], suffix: bytes, *, only: frozenset[bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """The headers with a strong ETag (of `only`, when given) suffixed for an encoded representation."""
    return [
        (name, value[:-1] + suffix)
        if name == b"etag" and value.startswith(b'"') and (only is None or value in only)
        else (name, value)
        for name, value in headers
    ]
