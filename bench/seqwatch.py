"""`.venv/bin/python bench/seqwatch.py`: what the "no message left behind" watch costs (keel.realtime.watch).

One `keel serve` on PostgreSQL + Redis (a fresh database, `keel_bench_seqwatch` by default, and Redis database 14,
flushed, as bench/run.py uses it). Three phases of --seconds each, read from keel's own counters (/metrics), the
server's CPU time (/proc) and PostgreSQL's transaction count (pg_stat_database):

- `no feed`: nothing followed; the watch must not query at all;
- `idle, N channels followed`: one WebSocket subscribed to --channels channels, no traffic;
- `under load`: the same, with REST publishes round-robin over the channels at --rate a second; the watch must
  find nothing to fill (a message in flight arrives through the broker within its grace).

Then the watch's query alone, timed against the same database for 1 and N channel ids (median of 200).
Prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import redis
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect

from keel import db
from keel.realtime import service

PUBLISHERS = 8


def env_of(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "KEEL_JWT_SECRET": "keel-bench-only-hs256-secret-0123456789abcdef",
            "KEEL_RATE_LIMIT": "off",
            "KEEL_AUTH_RATE_LIMIT": "off",
            "KEEL_LOG_LEVEL": "warning",
        }
    )
    return env


async def recreate(database_url: str) -> None:
    url = make_url(database_url)
    conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await conn.close()


@contextmanager
def serving(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(30)


def counter(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def transactions(database_url: str) -> int:
    url = make_url(database_url)
    conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database="postgres")
    try:
        value = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", url.database
        )
    finally:
        await conn.close()
    return int(value)


async def phase(
    name: str, base: str, pid: int, database_url: str, seconds: float, load: asyncio.Task[int] | None = None
) -> str:
    reads, fills = (
        counter(base, "keel_realtime_seq_watch_reads_total"),
        counter(base, "keel_realtime_seq_watch_fills_total"),
    )
    cpu, xacts, started = cpu_seconds(pid), await transactions(database_url), time.monotonic()
    await asyncio.sleep(seconds)
    posted = await load if load is not None else 0
    elapsed = time.monotonic() - started
    reads = (counter(base, "keel_realtime_seq_watch_reads_total") - reads) / elapsed
    fills = counter(base, "keel_realtime_seq_watch_fills_total") - fills
    cpu = (cpu_seconds(pid) - cpu) / elapsed * 100
    xacts_per_s = (await transactions(database_url) - xacts) / elapsed
    return (
        f"| {name} | {posted / elapsed:.0f} | {reads:.2f} | {xacts_per_s:.0f} | "
        f"{reads / xacts_per_s * 100 if xacts_per_s else 0:.1f} % | {fills:.0f} | {cpu:.1f} % |"
    )


async def publish(base: str, auth: dict[str, str], channels: list[str], rate: float, seconds: float) -> int:
    """PUBLISHERS closed-loop REST publishers, each paced to its share of `rate`."""
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as client:

        async def publisher(index: int) -> int:
            posted, start, share = 0, time.monotonic(), rate / PUBLISHERS
            while (now := time.monotonic() - start) < seconds:
                if posted < now * share:
                    channel = channels[(index + posted * PUBLISHERS) % len(channels)]
                    response = await client.post(f"/api/v1/channels/{channel}/messages", json={"body": "load"})
                    assert response.status_code == 201, response.text
                    posted += 1
                else:
                    await asyncio.sleep(1 / share)
            return posted

        return sum(await asyncio.gather(*(publisher(i) for i in range(PUBLISHERS))))


async def query_time(database_url: str, channels: list[str]) -> str:
    engine = db.create_engine(database_url, pool_size=1)
    rows = []
    try:
        for ids in (channels[:1], channels):
            ids_ = [uuid.UUID(c) for c in ids]
            times = []
            for _ in range(200):
                async with db.create_sessionmaker(engine)() as session:
                    started = time.perf_counter()
                    await service.last_seqs(session, ids_)
                    times.append(time.perf_counter() - started)
            rows.append(f"{len(ids)} channel(s): median {statistics.median(times) * 1000:.2f} ms")
    finally:
        await engine.dispose()
    return "; ".join(rows)


def set_up(base: str, count: int) -> tuple[dict[str, str], list[str]]:
    """A user and `count` channels: the bearer header and the channel ids."""
    body = {"username": "bench", "email": "bench@example.com", "password": "correct horse battery"}
    httpx.post(f"{base}/api/v1/users", json=body).raise_for_status()
    token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "bench", "password": body["password"]})
    auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
    channels = [
        httpx.post(f"{base}/api/v1/channels", json={"name": f"c{i}"}, headers=auth).json()["id"] for i in range(count)
    ]
    return auth, channels


async def measure(
    args: argparse.Namespace, base: str, pid: int, auth: dict[str, str], channels: list[str]
) -> tuple[list[str], str]:
    rows = [await phase("no feed", base, pid, args.database_url, args.seconds)]
    async with connect(base.replace("http", "ws") + "/ws", additional_headers=auth, max_queue=None) as ws:
        for channel in channels:
            await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
        await asyncio.sleep(args.seconds)  # autovacuum's analyze of the new channels passes first
        rows.append(await phase(f"idle, {len(channels)} channels followed", base, pid, args.database_url, args.seconds))
        load = asyncio.ensure_future(publish(base, auth, channels, args.rate, args.seconds))
        rows.append(await phase("under load", base, pid, args.database_url, args.seconds, load))
    return rows, await query_time(args.database_url, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/keel_bench_seqwatch")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")  # flushed, as bench/run.py's
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=200, help="REST publishes a second under load")
    args = parser.parse_args()
    asyncio.run(recreate(args.database_url))
    env = env_of(args.database_url, args.redis_url)
    subprocess.run([sys.executable, "-m", "keel", "migrate"], env=env, check=True, capture_output=True)
    redis.Redis.from_url(args.redis_url).flushdb()
    port = 3917
    base = f"http://127.0.0.1:{port}"
    with serving(env, port) as server:
        auth, channels = set_up(base, args.channels)
        rows, query = asyncio.run(measure(args, base, server.pid, auth, channels))
    print("| phase | publishes/s | watch reads/s | database transactions/s | watch's share | watch fills | keel CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\nThe watch's query alone: {query}.")


if __name__ == "__main__":
    main()
