"""Cheap WebSocket subscribers for bench/publishing.py: a separate process (the publishers' process cannot parse
200 000 frames/s with the `websockets` library, so it measured itself), raw asyncio protocols on uvloop, no task per
socket and no frame objects.

    python bench/subscribers.py HOST PORT TOKEN CHANNEL N

Each subscriber does the handshake and the subscribe once, then only scans what arrives for the messages' `"seq":N`
(C-speed `re.findall` over whole reads, a partial match carried to the next read) and checks that the seqs run
last+1, last+2, … with nothing lost, reordered or duplicated. Prints `ready` once every socket is subscribed; then
reads `expect <last seq>` on stdin, waits (10 s at most) for every socket to get there, and prints one JSON line:
how many messages each socket got, and which sockets broke order or fell short.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from contextlib import suppress
from typing import Final, cast

import uvloop

SEQ: Final = re.compile(rb'"seq":(\d+)[,}]')  # the message's own seq; `"last_seq":` does not match
SEQ_START: Final = b'"seq":'
KEY: Final = "dGhlIHNhbXBsZSBub25jZQ=="


def client_text_frame(payload: bytes) -> bytes:
    """A masked client text frame with an all-zero mask: the payload goes as is (RFC 6455 §5.3 allows any key)."""
    length = len(payload)
    header = bytes([0x81, 0x80 | length]) if length < 126 else bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload


class Subscriber(asyncio.Protocol):
    def __init__(self, host: str, token: str, channel: str) -> None:
        self.request = (
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.subscribe = client_text_frame(json.dumps({"type": "subscribe", "channel": channel}).encode())
        self.buffer = b""
        self.opened = False
        self.subscribed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.last = 0  # the last seq received
        self.count = 0
        self.broken: str | None = None  # what went wrong, once something did
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no asyncio.Transport subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.opened:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            assert buffer.startswith(b"HTTP/1.1 101"), buffer[:200]
            self.opened = True
            buffer = buffer[end + 4 :]
            assert self.transport is not None
            self.transport.write(self.subscribe)
        if not self.subscribed.done():
            match = re.search(rb'"last_seq":(\d+)', buffer)
            if match is None:
                self.buffer = buffer
                return
            self.last = int(match[1])
            self.subscribed.set_result(self.last)
            buffer = buffer[match.end() :]
        start = buffer.rfind(SEQ_START)
        if start < 0:
            self.buffer = buffer[-len(SEQ_START) :]
            return
        last = SEQ.match(buffer, start)
        if last is None:  # the last seq is cut off: scan up to it, keep it for the next read
            seqs, self.buffer = SEQ.findall(buffer, 0, start), buffer[start:]
        else:
            seqs, self.buffer = SEQ.findall(buffer), buffer[last.end() :]
        if not seqs:
            return
        got = list(map(int, seqs))
        if got != list(range(self.last + 1, self.last + 1 + len(got))) and self.broken is None:
            self.broken = f"after seq {self.last} got {got[:5]}…"
        self.last = got[-1]
        self.count += len(got)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.broken is None:
            self.broken = f"connection lost at seq {self.last}: {exc}"


async def main(host: str, port: int, token: str, channel: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    for _ in range(n):
        _, subscriber = await loop.create_connection(lambda: Subscriber(host, token, channel), host, port)
        try:
            await asyncio.wait_for(subscriber.subscribed, 30)
        except TimeoutError:
            sys.exit(f"subscriber {len(subscribers)} not subscribed: {subscriber.buffer[:300]!r} {subscriber.broken}")
        subscribers.append(subscriber)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        expected = int(line[1])
        with suppress(TimeoutError):
            async with asyncio.timeout(10):
                while any(s.last < expected and s.broken is None for s in subscribers):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # a poll: 100 sockets, every 50 ms, is nothing next to their reads
        counts = [s.count for s in subscribers]
        result = {
            "received": sum(counts),
            "min": min(counts),
            "max": max(counts),
            "short": sum(s.last < expected for s in subscribers),
            "broken": [s.broken for s in subscribers if s.broken is not None][:3],
        }
        print(json.dumps(result), flush=True)
        for s in subscribers:
            s.count = 0


if __name__ == "__main__":
    host, port, token, channel, n = sys.argv[1:6]
    uvloop.run(main(host, int(port), token, channel, int(n)))
