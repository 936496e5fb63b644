"""`make soak`: keel's deployment shape under a steady mixed load for minutes, held to SPEC §10.

Debian's nginx in front of two `keel serve` on PostgreSQL and Redis (deploy/cluster.py, as `make cluster`), and one
client process (uvloop) that keeps, for `--duration` seconds (180):

- WS_SUBSCRIBERS WebSockets and SSE_STREAMS SSE streams through nginx, spread over CHANNELS channels and USERS
  users, each following one channel from seq 0;
- REST writes at `--write-rate` per second (open loop: one request every 1/rate s, each in its own task), round-robin
  over the channels, and REST reads at `--read-rate` (a channel, the channel list, a v2 message page) likewise.

Then it waits up to CATCH_UP_S for every subscriber to reach its channel's last seq, and asserts: no error of any kind
(a non-2xx answer, a transport error, a socket or stream that ended), every message delivered to every follower of its
channel exactly once and in order, every 201's seq in its channel's 1..last_seq with no gap, and each instance's RSS
(its process tree) grown < 10 % from the end of the warm-up (median of the first three samples after WARMUP_S) to the
end (median of the last three). It prints a table and exits 1 if any check failed.

The database (default `keel_soak` on the local PostgreSQL) is dropped and created, and the Redis database (default 13)
flushed. The limiters are off: every request comes from one address, and the soak measures the service, not the
budget.

    python bench/soak.py [--duration 180] [--write-rate 20] [--read-rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil
import redis
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/soak.py`: the repository root holds deploy/
    sys.path.insert(0, str(ROOT))
from deploy.cluster import Cluster, cluster  # noqa: E402

DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/keel_soak"
REDIS_URL = "redis://127.0.0.1:6379/13"
JWT_SECRET = "soak-secret-that-is-at-least-32-bytes-long"  # noqa: S105 (a local, throwaway cluster)
PASSWORD = "correct horse battery"  # noqa: S105
CHANNELS, USERS = 10, 10
WS_SUBSCRIBERS, SSE_STREAMS = 500, 100
WARMUP_S = 30.0
SAMPLE_S = 5.0  # RSS sampling period
CATCH_UP_S = 15.0
RSS_GROWTH_LIMIT = 0.10
CONNECT_CONCURRENCY = 50


@dataclass
class Follower:
    kind: str  # "ws" or "sse"
    channel: int
    seqs: list[int] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str | None = None  # why it ended before the soak did


@dataclass
class Stats:
    started: float = 0.0
    write_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    acked: dict[int, list[int]] = field(default_factory=dict)  # channel index -> seqs answered 201
    sent_at: dict[str, float] = field(default_factory=dict)  # body -> when its POST was sent
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # instance -> (elapsed s, bytes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def prepare_services(database_url: str, redis_url: str) -> None:
    """An empty database (dropped and created) and a flushed Redis database."""
    parts = urlsplit(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    name = parts.path.lstrip("/")

    async def recreate() -> None:
        conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def raise_fd_limit() -> None:
    """Every socket is a descriptor here and in keel (the children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Soak:
    def __init__(self, running: Cluster, duration: float, write_rate: float, read_rate: float) -> None:
        self.running = running
        self.url = running.url
        self.duration, self.write_rate, self.read_rate = duration, write_rate, read_rate
        self.stats = Stats()
        self.tokens: list[str] = []
        self.channels: list[str] = []
        self.followers: list[Follower] = []
        self.stopping = False
        self.last_seq: list[int] = []  # per channel, once the load has stopped
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=limits) as client:
            await self._set_up(client)
            gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
            for i in range(WS_SUBSCRIBERS):
                self.followers.append(Follower("ws", i % CHANNELS))
            for i in range(SSE_STREAMS):
                self.followers.append(Follower("sse", i % CHANNELS))
            readers = [asyncio.create_task(self._follow(f, n, client, gate)) for n, f in enumerate(self.followers)]
            async with asyncio.timeout(120):
                await asyncio.gather(*(f.opened.wait() for f in self.followers))
            print(
                f"soak: {WS_SUBSCRIBERS} WebSockets and {SSE_STREAMS} SSE streams open; load for {self.duration:.0f} s"
            )
            self.stats.started = time.monotonic()
            sampler = asyncio.create_task(self._sample_rss())
            await asyncio.gather(
                self._paced(self.write_rate, lambda n: self._write(client, n)),
                self._paced(self.read_rate, lambda n: self._read(client, n)),
            )
            self.stopping = True
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=15)
            sampler.cancel()
            await self._catch_up(client)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _set_up(self, client: httpx.AsyncClient) -> None:
        for i in range(USERS):
            name = f"soak{i}"
            body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            (await client.post("/api/v1/users", json=body)).raise_for_status()
            token = await client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
            token.raise_for_status()
            self.tokens.append(token.json()["access_token"])
        for i in range(CHANNELS):
            created = await client.post("/api/v1/channels", json={"name": f"soak-{i}"}, headers=self._auth(i))
            created.raise_for_status()
            self.channels.append(created.json()["id"])
            self.stats.acked[i] = []

    def _auth(self, n: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[n % USERS]}"}

    async def _paced(self, rate: float, request: Callable[[int], Coroutine[Any, Any, None]]) -> None:
        """`request(n)` every 1/rate s, each in its own task (open loop: a slow answer does not slow the load)."""
        if rate <= 0:
            return
        n = 0
        while (elapsed := time.monotonic() - self.stats.started) < self.duration:
            task = asyncio.create_task(request(n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, n / rate - elapsed))

    async def _write(self, client: httpx.AsyncClient, n: int) -> None:
        channel = n % CHANNELS
        body = f"c{channel}-{n}"
        self.stats.sent_at[body] = started = time.monotonic()
        try:
            response = await client.post(
                f"/api/v1/channels/{self.channels[channel]}/messages", json={"body": body}, headers=self._auth(n)
            )
        except httpx.HTTPError as exc:
            self.stats.errors.append(f"write: {type(exc).__name__}: {exc}")
            return
        self.stats.write_ms.append((time.monotonic() - started) * 1000)
        if response.status_code != 201:
            self.stats.errors.append(f"write: {response.status_code} {response.text[:200]}")
            return
        self.stats.acked[channel].append(response.json()["seq"])

    async def _read(self, client: httpx.AsyncClient, n: int) -> None:
        channel = self.channels[n % CHANNELS]
        path = (f"/api/v1/channels/{channel}", "/api/v1/channels", f"/api/v2/channels/{channel}/messages?limit=20")
        started = time.monotonic()
        try:
            response = await client.get(path[n % 3], headers=self._auth(n))
        except httpx.HTTPError as exc:
            self.stats.errors.append(f"read: {type(exc).__name__}: {exc}")
            return
        self.stats.read_ms.append((time.monotonic() - started) * 1000)
        if response.status_code != 200:
            self.stats.errors.append(f"read: {response.status_code} {response.text[:200]}")

    def _delivered(self, follower: Follower, message: dict[str, Any]) -> None:
        follower.seqs.append(message["seq"])
        sent = self.stats.sent_at.get(message["body"])
        if sent is not None:
            self.stats.delivery_ms.append((time.monotonic() - sent) * 1000)

    async def _follow(self, follower: Follower, n: int, client: httpx.AsyncClient, gate: asyncio.Semaphore) -> None:
        try:
            if follower.kind == "ws":
                await self._follow_ws(follower, n, gate)
            else:
                await self._follow_sse(follower, n, client, gate)
            reason = "ended"
        except asyncio.CancelledError:
            raise
        except (ConnectionClosed, OSError, httpx.HTTPError, TimeoutError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        follower.ended = reason
        follower.opened.set()
        self.stats.errors.append(f"{follower.kind} follower {n}: {reason}")

    async def _follow_ws(self, follower: Follower, n: int, gate: asyncio.Semaphore) -> None:
        ws_url = self.url.replace("http://", "ws://", 1) + "/ws"
        async with gate:
            ws = await connect(ws_url, additional_headers=self._auth(n), ping_interval=None, open_timeout=30)
        async with ws:
            channel = self.channels[follower.channel]
            await ws.send(json.dumps({"type": "subscribe", "channel": channel, "since": 0}))
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "message":
                    self._delivered(follower, frame["message"])
                elif frame["type"] == "subscribed":
                    follower.opened.set()
                else:
                    raise ValueError(f"unexpected frame {raw!r}")

    async def _follow_sse(self, follower: Follower, n: int, client: httpx.AsyncClient, gate: asyncio.Semaphore) -> None:
        params = {"channel": self.channels[follower.channel]}
        async with gate:
            request = client.build_request("GET", "/events", params=params, headers=self._auth(n), timeout=None)
            response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise ValueError(f"/events answered {response.status_code}")
            follower.opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    self._delivered(follower, json.loads(line.removeprefix("data:")))
        finally:
            await response.aclose()

    async def _sample_rss(self) -> None:
        instances = {name: process for name, process in self.running.processes.items() if name.startswith("keel-")}
        while True:
            elapsed = time.monotonic() - self.stats.started
            for name, process in instances.items():
                with suppress(psutil.NoSuchProcess):
                    root = psutil.Process(process.pid)
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                    self.stats.rss.setdefault(name, []).append((elapsed, rss))
            await asyncio.sleep(SAMPLE_S)

    async def _catch_up(self, client: httpx.AsyncClient) -> None:
        for i, channel in enumerate(self.channels):
            response = await client.get(f"/api/v1/channels/{channel}", headers=self._auth(i))
            response.raise_for_status()
            self.last_seq.append(response.json()["last_seq"])
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline:
            if all(f.ended or (f.seqs[-1:] or [0])[0] >= self.last_seq[f.channel] for f in self.followers):
                return
            await asyncio.sleep(0.2)


def report(soak: Soak) -> list[str]:
    """Print the result table; return the checks that failed."""
    stats, failed = soak.stats, []
    followers = soak.followers
    wrong = [f for f in followers if f.seqs != list(range(1, soak.last_seq[f.channel] + 1))]
    lost = sum(len(set(range(1, soak.last_seq[f.channel] + 1)) - set(f.seqs)) for f in followers)
    duplicated = sum(len(f.seqs) - len(set(f.seqs)) for f in followers)
    acked_wrong = [i for i, seqs in stats.acked.items() if sorted(seqs) != list(range(1, soak.last_seq[i] + 1))]
    writes, reads = len(stats.write_ms), len(stats.read_ms)
    rows = [
        ("duration", f"{soak.duration:.0f} s of load (RSS growth counted after the first {WARMUP_S:.0f} s)"),
        ("shape", "nginx -> 2 x keel serve (1 worker each), PostgreSQL + Redis, limiters off"),
        ("followers", f"{WS_SUBSCRIBERS} WebSocket + {SSE_STREAMS} SSE over {CHANNELS} channels"),
        (
            "REST writes",
            f"{writes} ({writes / soak.duration:.1f}/s), p50 {percentile(stats.write_ms, 50):.1f} ms, "
            f"p99 {percentile(stats.write_ms, 99):.1f} ms, max {max(stats.write_ms, default=0):.0f} ms",
        ),
        (
            "REST reads",
            f"{reads} ({reads / soak.duration:.1f}/s), p50 {percentile(stats.read_ms, 50):.1f} ms, "
            f"p99 {percentile(stats.read_ms, 99):.1f} ms, max {max(stats.read_ms, default=0):.0f} ms",
        ),
        (
            "deliveries",
            f"{len(stats.delivery_ms)}, publish-to-receive p50 {percentile(stats.delivery_ms, 50):.1f} ms, "
            f"p99 {percentile(stats.delivery_ms, 99):.1f} ms, max {max(stats.delivery_ms, default=0):.0f} ms",
        ),
        ("errors", f"{len(stats.errors)} of {writes + reads} requests and {len(followers)} followers"),
        ("lost / duplicated", f"{lost} / {duplicated} (followers out of order or short: {len(wrong)})"),
    ]
    for name, samples in sorted(stats.rss.items()):
        after = [rss for t, rss in samples if t >= WARMUP_S]
        if len(after) < 6:
            rows.append((f"RSS {name}", f"too few samples after the warm-up ({len(after)})"))
            failed.append(f"RSS of {name} not measured")
            continue
        start, end = statistics.median(after[:3]), statistics.median(after[-3:])
        growth = end / start - 1
        rows.append((f"RSS {name}", f"{start / 2**20:.1f} MiB after warm-up -> {end / 2**20:.1f} MiB ({growth:+.1%})"))
        if growth >= RSS_GROWTH_LIMIT:
            failed.append(f"RSS of {name} grew {growth:.1%}")
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | result |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    if stats.errors:
        failed.append(f"{len(stats.errors)} errors, the first: {stats.errors[:3]}")
    if lost or duplicated or wrong:
        failed.append(f"{lost} lost, {duplicated} duplicated, {len(wrong)} followers wrong")
    if acked_wrong:
        failed.append(f"channels whose 201 seqs are not 1..last_seq: {acked_wrong}")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    parser.add_argument("--write-rate", type=float, default=20.0, help="REST writes per second (default 20)")
    parser.add_argument("--read-rate", type=float, default=40.0, help="REST reads per second (default 40)")
    parser.add_argument("--database-url", default=DATABASE_URL, help=f"recreated first (default {DATABASE_URL})")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"flushed first (default {REDIS_URL})")
    options = parser.parse_args()
    prepare_services(options.database_url, options.redis_url)
    raise_fd_limit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        {
            "DATABASE_URL": options.database_url,
            "REDIS_URL": options.redis_url,
            "KEEL_JWT_SECRET": JWT_SECRET,
            "KEEL_RATE_LIMIT": "off",
            "KEEL_AUTH_RATE_LIMIT": "off",
            "KEEL_MAX_STREAMS_PER_USER": "100000",
            "KEEL_LOG_FORMAT": "json",
            "KEEL_LOG_LEVEL": "warning",
        }
    )
    ports = [free_port() for _ in range(3)]
    directory = ROOT / "var" / "soak"
    with cluster(directory, env=env, port=ports[0], keel_ports=ports[1:]) as running:
        print(f"soak: nginx on {running.url} in front of {', '.join(running.instances)}; logs in {running.logs}")
        soak = Soak(running, options.duration, options.write_rate, options.read_rate)
        uvloop.run(soak.run())
        if (exited := running.exited()) is not None:
            sys.exit(f"soak: {exited}")
    failed = report(soak)
    for failure in failed:
        print(f"FAILED: {failure}")
    print("soak: passed" if not failed else "soak: failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
