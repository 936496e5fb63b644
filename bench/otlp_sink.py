"""A local OTLP/HTTP receiver for the observability scenario: `POST /v1/traces` is read and answered 200, nothing more.

`python bench/otlp_sink.py PORT` (bench/observability.py starts it pinned to the client CPU). Every request on a
keep-alive connection is read whole (Content-Length or chunked) and answered with an empty protobuf
ExportTraceServiceResponse (`b""`, `content-type: application/x-protobuf`); the body is never parsed, so the sink costs
a recv and a counter per export. `GET /stats` answers `{"posts": N, "bytes": B}` so far: the harness reads it before
and after each case to tell how much that case exported.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import uvloop

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
posts = 0
received = 0


async def body_of(reader: asyncio.StreamReader, head: bytes) -> int:
    """Read the request's body and return its length."""
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return total
            total += size
    start = lowered.find(b"content-length:")
    if start < 0:
        return 0
    length = int(lowered[start + 15 : lowered.index(b"\r\n", start)].strip())
    await reader.readexactly(length)
    return length


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global posts, received
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            size = await body_of(reader, head)
            if head.startswith(b"POST /v1/traces"):
                posts, received = posts + 1, received + size
                writer.write(OK)
            elif head.startswith(b"GET /stats"):
                stats = json.dumps({"posts": posts, "bytes": received}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(stats)
                )
                writer.write(stats)
            else:
                writer.write(NOT_FOUND)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await stop.wait()
    print(json.dumps({"posts": posts, "bytes": received}), flush=True)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
