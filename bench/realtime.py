"""The realtime scenarios of `make bench`: keel's `/ws` and `/events` against naive FastAPI's, in one invocation.

Method (as ../shared/bench/ws_fanout.py and sse_conns.py): every scenario gets a fresh server pinned to CPU 0 (one
worker), the peer first, then keel. This process is the only client, on CPU 1. Both servers inherit the raised fd soft
limit.

- `realtime-ws-fanout`, for each N: N WebSocket subscribers (keel's subscribe to the bench channel; the peer
  broadcasts to every socket) and a publisher connect, idle SETTLE_S, then the publisher publishes PUBLISHES times.
  Latency is from just before the send to each subscriber's arrival, dated at the socket: the subscribers are raw
  sockets on one epoll, read with no event loop and no parsing while a publish is measured (Subscribers): a client
  with an asyncio task per socket measured its own queueing, not the server. The server's RSS delta over N is its
  memory per idle connection.
- `realtime-sse-memory`: N SSE streams (the largest N), raw HTTP/1.1 GETs on asyncio streams under uvloop, open and
  get their first event; RSS delta / N.
- `realtime-publish-rest-ws`: RATE_SUBSCRIBERS WebSocket subscribers (the `websockets` package under uvloop), then
  RATE_PUBLISHERS publishers in a closed loop through REST (`POST /api/v1/channels/{id}/messages`; keel only) and
  through WS publish frames.

bench/run.py runs these after the HTTP cases (`--only ws`, `--only sse`, `--only realtime` select them) and writes
`report()` into its BENCHMARKS.md section.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import importlib.metadata
import json
import math
import os
import re
import resource
import select
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import psutil
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from run import (
    CLIENT_CPU,
    HOST,
    KEEL_ENV,
    KEEL_SERVE,
    SERVER_CPU,
    BenchError,
    Case,
    case_id,
    free_port,
    met,
    peer_cases,
    percent,
    running,
    tree_rss,
)

PUBLISHES = 20
PUBLISH_GAP_S = 0.3
DELIVERY_TIMEOUT_S = 60.0  # per publish; a publish that has not reached every subscriber by then counts incomplete
CONNECT_CONCURRENCY = 200  # handshakes in flight at once, as ws_fanout.py
CONNECT_TIMEOUT_S = 120.0  # for all N fan-out subscribers to be connected and subscribed
RECV_BYTES = 65536
FLOOR_WAIT_S = 1.0  # after the floor's publish, before reading: every copy has arrived by then
FIRST_EVENT_TIMEOUT_S = 30.0
SETTLE_S = 2.0  # idle time before an RSS reading; also how long deliveries may stall before a rate phase ends
RATE_SUBSCRIBERS, RATE_PUBLISHERS = 100, 8
RATE_WARMUP_S, RATE_S = 2.0, 10.0
CHANNEL_NAME = "bench"
# keel refuses a user's streams beyond KEEL_MAX_STREAMS_PER_USER (429); every bench socket is the bench user's
KEEL_REALTIME_ENV = {**KEEL_ENV, "KEEL_MAX_STREAMS_PER_USER": "100000"}
# The goals of the realtime issue: fan-out p99 at GOAL_N subscribers, memory per idle WS and per idle SSE stream
GOAL_N, GOAL_P99_MS, GOAL_KIB = 5000, 100.0, 24
KIB, MIB = 1024, 1024 * 1024
PEER_NAME = "naive FastAPI"
FANOUT = "realtime-ws-fanout"
SSE = "realtime-sse-memory"
RATE = "realtime-publish-rest-ws"
PARTS = {
    FANOUT: "keel and naive FastAPI: WS fan-out latency and memory per idle WS, at each --realtime-n",
    SSE: "keel and naive FastAPI: memory per idle SSE stream, at the largest --realtime-n",
    RATE: f"keel and naive FastAPI: publish rate through REST (keel) and WS, {RATE_SUBSCRIBERS} subscribers",
}


@dataclass(frozen=True, slots=True)
class FanOut:
    target: str
    n: int
    rss_before: int  # the fresh server, bytes
    rss_idle: int  # N connected (keel's subscribed), idle for SETTLE_S
    rss_after: int  # after the publishes
    p50_ms: tuple[float, ...]  # one per publish, over its arrivals
    p99_ms: tuple[float, ...]
    max_ms: tuple[float, ...]
    first_ms: tuple[float, ...]  # the earliest arrival: the publish's own path, before the fan-out
    floor_ms: float  # the client's time to collect N copies already waiting in its sockets
    lag_ms: tuple[float, ...]  # per publish, how late the client may have dated an arrival (Subscribers.collect)
    complete: int  # publishes that reached all N
    closed: int  # sockets the server closed meanwhile

    @property
    def kib_per_conn(self) -> float:
        return (self.rss_idle - self.rss_before) / self.n / KIB

    @property
    def kib_per_conn_after(self) -> float:
        return (self.rss_after - self.rss_before) / self.n / KIB

    @property
    def p50_median_ms(self) -> float:
        return statistics.median(self.p50_ms)

    @property
    def p99_median_ms(self) -> float:
        return statistics.median(self.p99_ms)

    @property
    def first_median_ms(self) -> float:
        return statistics.median(self.first_ms)


@dataclass(frozen=True, slots=True)
class FanOutRounds:
    """One target's fan-out at one N in every round of the run: the report gives medians over the rounds."""

    target: str
    rounds: tuple[FanOut, ...]

    def median(self, figure: Callable[[FanOut], float]) -> float:
        return statistics.median(figure(f) for f in self.rounds)

    def each(self, figure: Callable[[FanOut], float]) -> str:
        """Every round's figure, when there are several."""
        return f" (rounds: {' / '.join(f'{figure(f):.1f}' for f in self.rounds)})" if len(self.rounds) > 1 else ""

    @property
    def median_round(self) -> FanOut:
        """The round whose memory per connection is the median: its RSS readings go with that figure."""
        return sorted(self.rounds, key=lambda f: f.kib_per_conn)[len(self.rounds) // 2]


@dataclass(frozen=True, slots=True)
class SseMemory:
    target: str
    n: int
    streams: int  # streams that got their first event and were still open at the RSS reading
    rss_before: int
    rss_after: int
    first_error: str

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_after - self.rss_before) / max(1, self.streams) / KIB


@dataclass(frozen=True, slots=True)
class PublishRate:
    target: str
    via: str  # "REST" or "WS"
    published: int  # in the measured RATE_S
    seconds: float  # from the first send to the last reply of the measured phase
    p50_ms: float
    p99_ms: float
    delivered: float  # receipts at the subscribers / (messages x subscribers), warm-up included
    closed: int  # subscribers the server closed

    @property
    def per_s(self) -> float:
        return self.published / self.seconds


@dataclass(frozen=True, slots=True)
class RealtimeResult:
    fanouts: tuple[FanOut, ...]
    sse: tuple[SseMemory, ...]
    rates: tuple[PublishRate, ...]
    fd_limit: int
    rounds: int  # of the fan-out


@dataclass(frozen=True, slots=True)
class Server:
    """A running server under test: keel (with its bench channel and token) or the peer (one broadcast, no auth)."""

    case: Case
    port: int
    process: psutil.Process
    token: str
    channel: str

    @property
    def name(self) -> str:
        return self.case.label  # "keel" for the standard configuration; a variant names itself

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def rss(self) -> int:
        return tree_rss(self.process)

    def publish_frame(self, body: str, ref: str) -> str:
        # the peer broadcasts whatever text it gets, this frame included
        return json.dumps({"type": "publish", "channel": self.channel, "body": body, "ref": ref})

    def events_request(self) -> bytes:
        path = f"/events?channel={self.channel}" if self.channel else "/events"
        headers = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nAccept: text/event-stream\r\n{headers}\r\n"
        return head.encode()

    async def connect(self, *, subscribe: bool = True) -> ClientConnection:
        """A WebSocket client; keel's is subscribed to the bench channel unless told otherwise."""
        try:
            ws = await connect(
                f"ws://{HOST}:{self.port}/ws",
                additional_headers=self.headers,
                compression=None,
                proxy=None,
                ping_interval=None,  # keel pings; the client answers as long as it reads
                max_queue=None,  # never stop reading: a slow reader would be the client's doing
                open_timeout=60,
            )
        except InvalidStatus as exc:
            raise BenchError(f"{self.case.id}: GET /ws answered {exc.response.status_code}") from None
        if subscribe and self.channel:
            await ws.send(json.dumps({"type": "subscribe", "channel": self.channel}))
            reply = json.loads(await ws.recv())
            if reply.get("type") != "subscribed":
                raise BenchError(f"{self.case.id}: subscribe answered {reply}")
        return ws


@contextlib.contextmanager
def serving(case: Case, token: str, log: Path, cpu: str = SERVER_CPU) -> Iterator[Server]:
    """The case's server (run.running: pinned to `cpu`, stopped after), with keel's bench channel."""
    port = free_port()
    with running(case, port, log, cpu) as proc:
        channel = bench_channel(port, token) if case.is_keel else ""
        yield Server(case, port, psutil.Process(proc.pid), token, channel)


def api(port: int, method: str, path: str, token: str, payload: object = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def bench_channel(port: int, token: str) -> str:
    """The id of the CHANNEL_NAME channel, created by the run's first keel server (they share the database)."""
    status, body = api(port, "POST", "/api/v1/channels", token, {"name": CHANNEL_NAME})
    if status == 201:
        created: str = json.loads(body)["id"]
        return created
    if status != 409:
        raise BenchError(f"creating the bench channel: POST /api/v1/channels answered {status}: {body[:200]!r}")
    status, body = api(port, "GET", "/api/v1/channels?limit=100", token)
    ids = [c["id"] for c in json.loads(body) if c["name"] == CHANNEL_NAME] if status == 200 else []
    if not ids:
        raise BenchError(f"the bench channel exists but GET /api/v1/channels answered {status}: {body[:200]!r}")
    found: str = ids[0]
    return found


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank, as ws_fanout.py."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def message_body(raw: str | bytes) -> str | None:
    """The body of a delivered message: keel's `message` frame, or the publish frame the peer broadcasts as is."""
    frame = json.loads(raw)
    kind = frame.get("type")
    if kind == "error":
        raise BenchError(f"the server answered an error frame: {frame}")
    if kind == "message":
        return str(frame["message"]["body"])
    return str(frame["body"]) if kind == "publish" else None  # keel's `published` reply carries no new receipt


async def connect_all(server: Server, n: int, *, subscribe: bool = True) -> list[ClientConnection]:
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> ClientConnection:
        async with limit:
            return await server.connect(subscribe=subscribe)

    return await asyncio.gather(*(one() for _ in range(n)))


async def close_all(clients: Sequence[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


def closed_readers(readers: Sequence[asyncio.Task[None]]) -> int:
    """Readers whose socket the server closed; any other failure of a reader is raised."""
    closed = 0
    for reader in readers:
        if not reader.done():
            continue
        exc = reader.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            raise exc
        closed += 1
    return closed


# --- scenarios -------------------------------------------------------------------------------------------------


def raw_connection(server: Server, source: str = "") -> socket.socket:
    """A non-blocking socket to `server`, from the loopback `source` address if given (bench/sockets.py spreads its
    connections over several: one address has only ~28 000 ephemeral ports)."""
    sock = socket.create_connection((HOST, server.port), timeout=10, source_address=(source or HOST, 0))
    sock.setblocking(False)
    return sock


def recv_waiting(sock: socket.socket) -> bytes | None:
    """One recv of what is waiting: None when nothing is, b"" once the server has closed (or reset) the connection."""
    try:
        return sock.recv(RECV_BYTES)
    except BlockingIOError:
        return None
    except ConnectionError:
        return b""


class Subscriber:
    """A raw socket speaking WebSocket: bytes are read as they come, frames parsed only between publishes.

    websockets' sans-I/O protocol does the handshake, checks and unmasks frames and answers the server's pings, but
    only in `parse`: while a publish is measured the socket is only read (Subscribers.collect).
    """

    __slots__ = ("case_id", "channel", "chunks", "protocol", "ready", "sock", "subscribing")

    def __init__(self, server: Server, channel: str, source: str = "") -> None:
        self.case_id = server.case.id
        self.channel = channel  # subscribed to once the handshake is done; "" for none
        self.subscribing = False  # the subscribe is sent, its answer not yet read
        self.ready = False  # the handshake is done, and the subscribe answered if there is one
        self.chunks: list[tuple[float, bytes]] = []  # (when the loop saw the socket readable, what it read)
        self.sock = raw_connection(server, source)
        self.protocol = ClientProtocol(parse_uri(f"ws://{HOST}:{server.port}/ws"))  # no extensions: no deflate
        request = self.protocol.connect()
        request.headers.update(server.headers)
        self.protocol.send_request(request)
        self.flush()

    def flush(self) -> None:
        # a handshake, a subscribe or publish frame, a pong: each far below the socket's send buffer
        for data in self.protocol.data_to_send():
            if data:  # b"" asks for a half-close after a failed handshake, which parse() raises
                self.sock.sendall(data)

    def send_text(self, text: str) -> float:
        """Send one text frame; returns the time just before it went."""
        self.protocol.send_text(text.encode())
        frame = b"".join(self.protocol.data_to_send())
        sent = time.perf_counter()
        self.sock.sendall(frame)
        return sent

    def read(self, now: float) -> bool:
        """One recv, dated `now`; False once the server has closed the connection."""
        if (data := recv_waiting(self.sock)) is None:
            return True
        self.chunks.append((now, data))
        return bool(data)

    def parse(self) -> list[tuple[float, str]]:
        """The text frames read so far, each dated by the chunk that completed it; the handshake moves on here."""
        texts = []
        for now, data in self.chunks:
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            events = self.protocol.events_received()
            texts += [(now, bytes(e.data).decode()) for e in events if isinstance(e, Frame) and e.opcode is Opcode.TEXT]
        self.chunks.clear()
        if (failed := self.protocol.handshake_exc) is not None:
            status = failed.response.status_code if isinstance(failed, InvalidStatus) else repr(failed)
            raise BenchError(f"{self.case_id}: GET /ws answered {status}")
        if not self.ready and self.protocol.state is State.OPEN:
            if not self.channel:
                self.ready = True
            elif not self.subscribing:
                self.protocol.send_text(json.dumps({"type": "subscribe", "channel": self.channel}).encode())
                self.subscribing = True
            elif texts:  # keel sends nothing before the answer to the subscribe
                reply = json.loads(texts.pop(0)[1])
                if reply.get("type") != "subscribed":
                    raise BenchError(f"{self.case_id}: subscribe answered {reply}")
                self.ready = True
        self.flush()
        return texts


class Subscribers:
    """N subscribers and a publisher on one epoll, in this process, with no event loop.

    The publisher is a socket of its own (keel's is not subscribed; the peer writes to it too, N + 1 sockets), so
    every one of the N is measured the same way.
    """

    def __init__(
        self,
        server: Server,
        n: int,
        publisher: Server | None = None,
        sources: Sequence[str] = (),
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.server = server
        self.sources = sources or (HOST,)
        self.poll = select.epoll()
        self.live: dict[int, Subscriber] = {}  # by fd, until the server closes it
        self.subscribers: list[Subscriber] = []
        self.publisher = self.connect("", publisher or server)  # another instance: bench/scale.py's cross fan-out
        deadline = time.monotonic() + timeout
        while not self.publisher.ready or len(self.subscribers) < n or not all(s.ready for s in self.subscribers):
            if time.monotonic() > deadline:
                raise BenchError(f"{server.case.id}: {n} subscribers not ready within {timeout:.0f} s")
            opening = sum(not s.ready for s in self.subscribers)
            for _ in range(min(n - len(self.subscribers), CONNECT_CONCURRENCY - opening)):
                self.subscribers.append(self.connect(server.channel))
            self.pump(0.05)

    def connect(self, channel: str, server: Server | None = None) -> Subscriber:
        source = self.sources[len(self.subscribers) % len(self.sources)]
        try:
            sub = Subscriber(server or self.server, channel, source)
        except OSError as exc:
            raise BenchError(f"{self.server.case.id}: connecting a WebSocket: {exc}") from None
        self.live[sub.sock.fileno()] = sub
        self.poll.register(sub.sock, select.EPOLLIN)
        return sub

    def close(self) -> None:
        for sub in (self.publisher, *self.subscribers):
            sub.sock.close()
        self.poll.close()

    def drop(self, fd: int) -> None:
        self.poll.unregister(fd)
        del self.live[fd]

    def pump(self, seconds: float) -> None:
        """Read and parse for `seconds` (handshakes, pongs, late replies); an error frame is raised."""
        until = time.perf_counter() + seconds
        while (left := until - time.perf_counter()) > 0:
            events = self.poll.poll(left)
            now = time.perf_counter()
            for fd, _ in events:
                sub = self.live[fd]
                if not sub.read(now):
                    self.drop(fd)
                for _, text in sub.parse():
                    message_body(text)

    def publish(self, body: str) -> float:
        """One publish frame whose body and ref are `body`; the time just before it was sent."""
        return self.publisher.send_text(self.server.publish_frame(body, body))

    def collect(self, marker: bytes, deadline: float) -> float:
        """Read until every subscriber has bytes holding `marker`: per arrival, only a recv and that check.

        One clock reading per epoll wake-up dates every socket it reports: the moment this process learnt that
        their bytes had come. A date is late by at most the reads of the wake-up before, so the longest such
        stretch of reading is returned: how late any date may be.
        """
        waiting = {s.sock.fileno() for s in self.subscribers} & self.live.keys()
        live, poll, tail = self.live, self.poll, len(marker) - 1
        maxevents, lag, now = len(live), 0.0, time.perf_counter()
        while waiting:
            left = deadline - now
            if left <= 0:
                break
            events = poll.poll(left, maxevents)
            now = time.perf_counter()
            for fd, _ in events:
                sub = live[fd]
                if not sub.read(now):
                    self.drop(fd)
                    waiting.discard(fd)
                    continue
                chunks = sub.chunks
                data = chunks[-1][1]
                # on loopback a frame this small comes in one chunk; the check across two covers a split one
                if marker in data or (len(chunks) > 1 and marker in chunks[-2][1][-tail:] + data):
                    waiting.discard(fd)
            read = time.perf_counter()
            lag, now = max(lag, read - now), read
        return lag

    def arrivals(self, body: str) -> list[float]:
        """When each subscriber's copy of `body` was complete; a second copy, or any other message, is an error."""
        self.publisher.parse()  # keel's `published` reply, or the peer's broadcast to the publisher
        arrived = []
        for sub in self.subscribers:
            got = []
            for now, text in sub.parse():
                delivered = message_body(text)
                if delivered is None:
                    continue
                if delivered != body:
                    raise BenchError(f"{self.server.case.id}: a subscriber got {delivered!r}, not {body!r}")
                got.append(now)
            if len(got) > 1:
                raise BenchError(f"{self.server.case.id}: a subscriber got {body!r} {len(got)} times")
            arrived += got
        return arrived

    def floor(self, body: str) -> float:
        """The client's own floor: seconds to collect N copies of `body` that are already in the sockets."""
        self.publish(body)
        time.sleep(FLOOR_WAIT_S)
        start = time.perf_counter()
        self.collect(body.encode(), start + DELIVERY_TIMEOUT_S)
        took = time.perf_counter() - start
        if len(self.arrivals(body)) != len(self.subscribers):
            raise BenchError(f"{self.server.case.id}: the floor's publish did not reach every subscriber")
        return took


def fan_out(server: Server, n: int, publisher: Server | None = None) -> FanOut:
    """N subscribers, PUBLISHES publishes from another socket (on `publisher` if given); send to each arrival."""
    time.sleep(1)
    rss_before = server.rss()
    subs = Subscribers(server, n, publisher)
    try:
        subs.pump(SETTLE_S)
        rss_idle = server.rss()
        run = uuid.uuid4().hex[:12]  # bodies unique to this run: nothing left from another can pass for a delivery
        per_publish, lags = [], []
        gc.disable()  # no client-side collection pause inside a measured publish
        try:
            for publish in range(PUBLISHES):
                subs.pump(PUBLISH_GAP_S)  # each publish starts quiet, pings answered
                body = f"fanout-{run}-{publish}"
                sent = subs.publish(body)
                lags.append(subs.collect(body.encode(), sent + DELIVERY_TIMEOUT_S) * 1000)
                per_publish.append([(arrived - sent) * 1000 for arrived in subs.arrivals(body)])
            subs.pump(PUBLISH_GAP_S)
            floor_s = subs.floor(f"fanout-{run}-floor")
        finally:
            gc.enable()
        rss_after = server.rss()
        closed = sum(s.sock.fileno() not in subs.live for s in subs.subscribers)
    finally:
        subs.close()
    if not any(per_publish):
        raise BenchError(f"{server.case.id}: no publish reached any of {n} subscribers")
    return FanOut(
        target=server.name,
        n=n,
        rss_before=rss_before,
        rss_idle=rss_idle,
        rss_after=rss_after,
        p50_ms=tuple(percentile(ms, 50) for ms in per_publish if ms),
        p99_ms=tuple(percentile(ms, 99) for ms in per_publish if ms),
        max_ms=tuple(max(ms) for ms in per_publish if ms),
        first_ms=tuple(min(ms) for ms in per_publish if ms),
        floor_ms=floor_s * 1000,
        lag_ms=tuple(lags),
        complete=sum(len(ms) == n for ms in per_publish),
        closed=closed,
    )


async def sse_memory(server: Server, n: int) -> SseMemory:
    """N streams, each read until its first event, then drained; RSS delta after SETTLE_S + 1 s (sse_conns.py: 3 s)."""
    await asyncio.sleep(1)
    rss_before = server.rss()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    request = server.events_request()

    async def open_stream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with limit:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                status = head.split(b"\r\n", 1)[0]
                raise BenchError(f"{server.case.id}: GET /events answered {status!r}")
            body = b""
            while b"retry:" not in body and b"data:" not in body:  # keel starts with retry:, the peer with a tick
                chunk = await reader.read(4096)
                if not chunk:
                    raise BenchError(f"{server.case.id}: an SSE stream closed before its first event")
                body += chunk
            return reader, writer

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(4096):
            pass

    opened = await asyncio.gather(
        *(asyncio.wait_for(open_stream(), FIRST_EVENT_TIMEOUT_S) for _ in range(n)), return_exceptions=True
    )
    streams = [s for s in opened if not isinstance(s, BaseException)]
    errors = [e for e in opened if isinstance(e, BaseException)]
    drains = [asyncio.create_task(drain(reader)) for reader, _ in streams]
    await asyncio.sleep(SETTLE_S + 1)
    rss_after = server.rss()
    still_open = sum(not task.done() for task in drains)  # a stream the server has ended no longer counts
    for task in drains:
        task.cancel()
    for _, writer in streams:
        writer.close()
    return SseMemory(server.name, n, still_open, rss_before, rss_after, repr(errors[0]) if errors else "")


class Publisher(Protocol):
    async def publish(self, body: str, ref: str) -> None:
        """One message, returning when the server has acknowledged it."""

    async def close(self) -> None: ...


class WsPublisher:
    """Publish frames on a socket of its own; keel's is not subscribed, so it only gets `published` replies."""

    def __init__(self, server: Server, ws: ClientConnection) -> None:
        self.server, self.ws = server, ws

    async def publish(self, body: str, ref: str) -> None:
        frame = self.server.publish_frame(body, ref)
        await self.ws.send(frame)
        while True:
            raw = await self.ws.recv()
            if raw == frame:
                return  # the peer has no reply: its broadcast reaches the sender too, as sent
            if not self.server.channel:
                continue  # another publisher's broadcast
            reply = json.loads(raw)
            if reply.get("type") == "published" and reply.get("ref") == ref:
                return
            raise BenchError(f"{self.server.case.id}: a publish frame got {reply}")

    async def close(self) -> None:
        await self.ws.close()


class RestPublisher:
    """`POST /api/v1/channels/{id}/messages` on one keep-alive HTTP/1.1 connection."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.head = (
            f"POST /api/v1/channels/{server.channel}/messages HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
            f"Authorization: Bearer {server.token}\r\nContent-Type: application/json\r\n"
        )

    async def publish(self, body: str, ref: str) -> None:
        payload = json.dumps({"body": body}).encode()
        self.writer.write(f"{self.head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
        if length is None:
            raise BenchError(f"{self.server.case.id}: a REST publish answered without Content-Length: {head!r}")
        reply = await self.reader.readexactly(int(length.group(1)))
        if not head.startswith(b"HTTP/1.1 201"):
            raise BenchError(f"{self.server.case.id}: a REST publish answered {head[:12]!r}: {reply[:200]!r}")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def open_publishers(server: Server, via: str) -> list[Publisher]:
    if via == "WS":
        sockets = await connect_all(server, RATE_PUBLISHERS, subscribe=False)
        return [WsPublisher(server, ws) for ws in sockets]
    streams = [await asyncio.open_connection(HOST, server.port) for _ in range(RATE_PUBLISHERS)]
    return [RestPublisher(server, reader, writer) for reader, writer in streams]


async def publish_for(publishers: Sequence[Publisher], seconds: float) -> tuple[list[float], float]:
    """Every publisher in a closed loop until `seconds` have passed; each round trip in ms, and the time taken."""
    start = time.perf_counter()
    deadline = start + seconds
    latencies: list[float] = []

    async def loop(i: int, publisher: Publisher) -> None:
        sent = 0
        while (now := time.perf_counter()) < deadline:
            await publisher.publish(f"p{i}-{sent} {now!r}", f"p{i}-{sent}")
            latencies.append((time.perf_counter() - now) * 1000)
            sent += 1

    await asyncio.gather(*(loop(i, p) for i, p in enumerate(publishers)))
    return latencies, time.perf_counter() - start


async def wait_delivered(receipts: list[int], expected: int) -> None:
    """Until the subscribers have every message, or their receipts stall for SETTLE_S."""
    last, since = -1, time.perf_counter()
    while (total := sum(receipts)) < expected:
        if total != last:
            last, since = total, time.perf_counter()
        elif time.perf_counter() - since > SETTLE_S:
            return
        await asyncio.sleep(0.1)


async def publish_rates(server: Server) -> list[PublishRate]:
    """RATE_SUBSCRIBERS subscribers; then RATE_PUBLISHERS publishers per way to publish, a warm-up and RATE_S each."""
    subscribers = await connect_all(server, RATE_SUBSCRIBERS)
    receipts = [0] * RATE_SUBSCRIBERS

    async def count(i: int, ws: ClientConnection) -> None:
        async for _ in ws:  # a subscriber gets nothing but messages, so nothing is parsed
            receipts[i] += 1

    readers = [asyncio.create_task(count(i, ws)) for i, ws in enumerate(subscribers)]
    rates = []
    for via in ("REST", "WS") if server.case.is_keel else ("WS",):  # the peer has no REST publish
        receipts[:] = [0] * RATE_SUBSCRIBERS
        publishers = await open_publishers(server, via)
        warmup, _ = await publish_for(publishers, RATE_WARMUP_S)
        latencies, seconds = await publish_for(publishers, RATE_S)
        await asyncio.gather(*(p.close() for p in publishers))
        expected = (len(warmup) + len(latencies)) * RATE_SUBSCRIBERS
        await wait_delivered(receipts, expected)
        rate = PublishRate(
            target=server.name,
            via=via,
            published=len(latencies),
            seconds=seconds,
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            delivered=sum(receipts) / expected,
            closed=closed_readers(readers),
        )
        rates.append(rate)
    for reader in readers:
        reader.cancel()
    await close_all(subscribers)
    return rates


# --- the run ---------------------------------------------------------------------------------------------------


def raise_fd_limit(n: int) -> int:
    """The fd soft limit up to the hard one (20 000 here), inherited by the servers: each side holds N sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < n + 1000:
        raise BenchError(f"the fd hard limit is {hard}: too low for {n} connections (ulimit -Hn)")
    return hard


def fan_out_rounds(targets: Sequence[tuple[Case, str]], ns: Sequence[int], logs: Path, rounds: int) -> list[FanOut]:
    """The fan-out on a fresh server per (case, token) target, at every N, `rounds` times; the caller is on CPU 1.

    A target is a Case, so a variant of keel (bench/observability.py: tracing on) is a Case with its own env.
    """
    fanouts = []
    for i in range(rounds):
        for n in ns:
            for case, token in targets:
                log = logs / f"realtime-fanout-{n}.{case.id}.r{i + 1}.server.log"
                with serving(case, token, log) as server:
                    f = fan_out(server, n)
                fanouts.append(f)
                print(
                    f"  realtime  round {i + 1}/{rounds} fan-out N={n:<5} {f.target:14} "
                    f"p50 {f.p50_median_ms:6.1f} ms  p99 {f.p99_median_ms:6.1f} ms  max {max(f.max_ms):6.1f} ms"
                    f"  floor {f.floor_ms:5.1f} ms  {f.kib_per_conn:5.1f} KiB/WS",
                    flush=True,
                )
    return fanouts


def estimate_s(parts: Sequence[str], ns: Sequence[int], rounds: int) -> int:
    """A rough duration, for the operator: two servers per scenario."""
    seconds = 0.0
    if FANOUT in parts:
        seconds += rounds * sum(2 * (15 + n / 200 + PUBLISHES * PUBLISH_GAP_S + FLOOR_WAIT_S) for n in ns)
    if SSE in parts:
        seconds += 2 * (15 + max(ns) / 200)
    if RATE in parts:
        seconds += 3 * (10 + RATE_WARMUP_S + RATE_S + SETTLE_S)
    return math.ceil(seconds)


def measure(
    parts: Sequence[str], ns: Sequence[int], workdir: Path, logs: Path, keel_token: str, rounds: int = 1
) -> RealtimeResult:
    """The selected scenarios, each on a fresh peer server and then a fresh keel server; this process on CPU 1.

    The fan-out runs `rounds` times, every N and both servers each round, so they share the machine's drift; the
    memory and publish-rate scenarios run once.
    """
    fd_limit = raise_fd_limit(max(ns))
    keel = Case("keel-realtime", "keel", "uvicorn", "/healthz", KEEL_SERVE, workdir, KEEL_REALTIME_ENV)
    peer_id = case_id("fastapi", "uvicorn", "/api/v1/public")
    peer = replace(next(c for c in peer_cases(workdir) if c.id == peer_id), name=PEER_NAME)
    targets = ((peer, ""), (keel, keel_token))
    fanouts, sse, rates = [], [], []
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the clients must not take the server's CPU
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            fanouts += fan_out_rounds(targets, ns, logs, rounds if FANOUT in parts else 0)
            for case, token in targets if SSE in parts else ():
                with serving(case, token, logs / f"realtime-sse.{case.id}.server.log") as server:
                    s = runner.run(sse_memory(server, max(ns)))
                sse.append(s)
                print(f"  realtime  SSE N={s.n:<9} {s.target:14} {s.kib_per_stream:5.1f} KiB/stream", flush=True)
            for case, token in targets if RATE in parts else ():
                with serving(case, token, logs / f"realtime-rate.{case.id}.server.log") as server:
                    measured = runner.run(publish_rates(server))
                rates += measured
                for r in measured:
                    print(
                        f"  realtime  publish via {r.via:4}  {r.target:14} {r.per_s:7.0f} msg/s  p99 {r.p99_ms:6.1f} ms"
                        f"  delivered {percent(r.delivered)}",
                        flush=True,
                    )
    finally:
        os.sched_setaffinity(0, affinity)
    return RealtimeResult(tuple(fanouts), tuple(sse), tuple(rates), fd_limit, rounds)


# --- report ----------------------------------------------------------------------------------------------------


class Measured(Protocol):
    @property
    def target(self) -> str: ...


R = TypeVar("R", bound=Measured)


def row(
    label: str,
    results: Sequence[R],
    text: Callable[[R, bool], str],
    goal: str = "",
    verdict: Callable[[R], bool] | None = None,
    no_peer: str = "",
) -> str:
    """One table row: keel's figures (bold), the peer's, and the goal with keel's verdict when there is one."""
    keel = next((r for r in results if r.target == "keel"), None)
    peer = next((r for r in results if r.target == PEER_NAME), None)
    cells = (
        label,
        text(keel, True) if keel else "",
        text(peer, False) if peer else no_peer,
        goal,
        met(verdict(keel)) if keel and verdict else "",
    )
    return "| " + " | ".join(cells) + " |"


def strong(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def worst_max_ms(f: FanOut) -> float:
    return max(f.max_ms)


def worst_lag_ms(f: FanOut) -> float:
    return max(f.lag_ms)


def fanout_text(r: FanOutRounds, bold: bool) -> str:
    p99 = strong(f"{r.median(lambda f: f.p99_median_ms):.1f} ms", bold) + r.each(lambda f: f.p99_median_ms)
    text = f"p50 {r.median(lambda f: f.p50_median_ms):.1f} ms, p99 {p99}, max {r.median(worst_max_ms):.1f} ms"
    text += f"; first arrival {r.median(lambda f: f.first_median_ms):.1f} ms"
    text += f"; client floor {r.median(lambda f: f.floor_ms):.1f} ms, dates late by ≤ {r.median(worst_lag_ms):.1f} ms"
    complete, publishes = sum(f.complete for f in r.rounds), PUBLISHES * len(r.rounds)
    if complete < publishes:
        text += f"; **{complete}/{publishes}** publishes reached all N"
    closed = sum(f.closed for f in r.rounds)
    return text + (f"; {closed} sockets closed by the server" if closed else "")


def ws_memory_text(r: FanOutRounds, bold: bool) -> str:
    f = r.median_round
    figure = strong(f"{f.kib_per_conn:.1f} KiB", bold) + r.each(lambda f: f.kib_per_conn)
    return (
        f"{figure} (RSS {f.rss_before / MIB:.1f} → {f.rss_idle / MIB:.1f} MiB); {f.kib_per_conn_after:.1f} KiB per "
        "socket after the publishes"
    )


def sse_memory_text(s: SseMemory, bold: bool) -> str:
    figure = strong(f"{s.kib_per_stream:.1f} KiB", bold)
    text = f"{figure} (RSS {s.rss_before / MIB:.1f} → {s.rss_after / MIB:.1f} MiB)"
    return text + (f"; **{s.streams}/{s.n}** streams open, first error: {s.first_error}" if s.streams < s.n else "")


def rate_text(r: PublishRate, bold: bool) -> str:
    p99 = strong(f"{r.p99_ms:.1f} ms", bold)
    text = f"{r.per_s:.0f} msg/s, p50 {r.p50_ms:.1f} ms, p99 {p99}; delivered {percent(r.delivered)}"
    return text + (f", {r.closed} subscribers closed by the server" if r.closed else "")


def report(result: RealtimeResult) -> list[str]:
    """The method paragraph and the table, for run.py's BENCHMARKS.md section."""
    lines = [f"| realtime | keel | {PEER_NAME} | goal | met |", "|---|---|---|---|---|"]
    ns = sorted({f.n for f in result.fanouts})
    by_n = {
        n: [
            FanOutRounds(target, tuple(f for f in result.fanouts if f.n == n and f.target == target))
            for target in dict.fromkeys(f.target for f in result.fanouts)
        ]
        for n in ns
    }
    for n in ns:
        goal, verdict = (f"p99 ≤ {GOAL_P99_MS:.0f} ms", fanout_met) if n == GOAL_N else ("", None)
        lines.append(row(f"WS fan-out, N={n}, {PUBLISHES} publishes", by_n[n], fanout_text, goal, verdict))
    for n in ns:
        goal, ws_verdict = (f"≤ {GOAL_KIB} KiB", ws_memory_met) if n == GOAL_N else ("", None)
        lines.append(row(f"memory per idle WS, N={n}", by_n[n], ws_memory_text, goal, ws_verdict))
    if result.sse:
        n = result.sse[0].n
        goal, sse_verdict = (f"≤ {GOAL_KIB} KiB", sse_memory_met) if n == GOAL_N else ("", None)
        lines.append(row(f"memory per idle SSE stream, N={n}", result.sse, sse_memory_text, goal, sse_verdict))
    for via in ("REST", "WS"):
        rates = [r for r in result.rates if r.via == via]
        label = f"publish via {via}, {RATE_PUBLISHERS} publishers, {RATE_SUBSCRIBERS} subscribers, {RATE_S:.0f} s"
        if rates:
            lines.append(row(label, rates, rate_text, "none set", no_peer="— (it has no REST publish)"))
    return [method_line(result), "\n".join(lines)]


def fanout_met(r: FanOutRounds) -> bool:
    return r.median(lambda f: f.p99_median_ms) <= GOAL_P99_MS and all(f.complete == PUBLISHES for f in r.rounds)


def ws_memory_met(r: FanOutRounds) -> bool:
    return r.median(lambda f: f.kib_per_conn) <= GOAL_KIB


def sse_memory_met(s: SseMemory) -> bool:
    return s.kib_per_stream <= GOAL_KIB and s.streams == s.n


def rounds_text(rounds: int) -> str:
    if rounds == 1:
        return "once"
    return (
        f"in {rounds} rounds (every N and both servers in each; its figures are the medians of the rounds', with "
        "each round's p99 and memory in brackets)"
    )


def method_line(result: RealtimeResult) -> str:
    websockets = importlib.metadata.version("websockets")
    sentences = [
        f"Realtime scenarios: each a fresh server on CPU {SERVER_CPU}, one worker (keel: `keel serve`, uvicorn "
        f"with wsproto; {PEER_NAME}: uvicorn, its `/ws` a sequential `await send_text` loop over every socket, its "
        f"`/events` sse-starlette), {PEER_NAME} first, then keel; the fan-out {rounds_text(result.rounds)}, the "
        "others once.",
        f"The clients are this one process on CPU {CLIENT_CPU}; the fd soft limit is raised to {result.fd_limit} and "
        "the servers inherit it.",
        "WebSocket clients offer no permessage-deflate: keel has it off; "
        f"{PEER_NAME} would accept it from a browser and then need about twice the memory per socket "
        "(../shared/bench/BASELINE.md §3), so its figures here are its cheaper configuration.",
        "keel's clients send `Authorization: Bearer` and subscribe to one channel; the peer sends to every socket.",
        "keel runs with `KEEL_RATE_LIMIT` never tripping and `KEEL_WS_SEND_QUEUE` at its default (256).",
    ]
    if result.fanouts:
        sentences += fanout_method()
    if result.fanouts or result.sse:
        sentences.append(
            "Memory per idle connection: the server's RSS (process tree) after N connected (WS: and subscribed) and "
            f"idled {SETTLE_S:.0f} s, minus its RSS fresh, / N; an SSE stream counts once it has its first event "
            "(keel: `retry:`; the peer: a tick)."
        )
    if result.rates:
        sentences.append(
            f"Publish rate: {RATE_SUBSCRIBERS} WS subscribers, then {RATE_PUBLISHERS} publishers in a closed loop, "
            f"{RATE_WARMUP_S:.0f} s warm-up, {RATE_S:.0f} s measured; REST latency is the request's (keep-alive), WS "
            "latency from the publish frame to its `published` reply (the peer has none: to its own broadcast "
            "coming back); delivered = receipts at the subscribers / (messages x subscribers), warm-up included; the "
            f"clients are the `websockets` package {websockets} on uvloop and run on the client CPU too."
        )
    return " ".join(sentences)


def fanout_method() -> list[str]:
    return [
        f"Fan-out: N subscribers and one publisher socket connect and idle {SETTLE_S:.0f} s (the peer writes to the "
        f"publisher too: N + 1 sockets), then the publisher sends {PUBLISHES} publish frames, each after "
        f"{PUBLISH_GAP_S} s of quiet, each with a body unique to the run; per publish, p50/p99/max over the N "
        "subscribers of the time from just before the send to the arrival; the table gives the medians over "
        "publishes of p50 and p99, the worst max, and the median first arrival (the publish's own path: keel's "
        "includes its database write).",
        "The subscribers are raw non-blocking sockets (websockets' sans-I/O protocol for the handshake and frames) on "
        "one epoll, with no event loop: while a publish is measured the client only reads each socket and looks for "
        "the body, and one clock reading per epoll wake-up dates every socket it reports; frames are parsed and "
        "checked afterwards (every subscriber must get the body exactly once, and nothing else), pings are answered "
        "between publishes.",
        f"The client's own bounds: *floor*, the time it takes to collect the N copies of one more publish left to "
        f"arrive for {FLOOR_WAIT_S:.0f} s first, and *dates late by*, the longest stretch of reading between two "
        "epoll wake-ups during the measured publishes, by which a date can be late.",
    ]
