"""Publishing into one channel at the limit (issue 16 goal 2): msg/s, p99 ack latency and server CPU per message,
REST and WS publishers, 100 WS subscribers, on SQLite and on PostgreSQL + Redis.

    .venv/bin/python bench/publishing.py [--before SRC_DIR] [--seconds 4] [--publishers 32] [--subscribers 100]

The publishers (raw HTTP/1.1 keep-alive connections, or `websockets` clients) run in this process; the subscribers
in another one (bench/subscribers.py: raw sockets on uvloop that only scan for seqs), since at 2 000 msg/s the
100 sockets receive 200 000 frames/s, which the `websockets` library in the publishers' process could not parse (it
measured itself: 316/392 msg/s against 575/683 with the cheap subscribers, same server, load 2). After each row every
subscriber must have got every message of the row exactly once, in seq order (the row fails otherwise).

`--before` runs the same scenario first on another checkout's `src` (e.g. `git archive def2c58 src | tar -x -C
/tmp/base`), interleaved per backend, so before and after share the machine's load. Each server is `keel serve`
(tests/servers.py: real process, fresh SQLite file or emptied PostgreSQL and flushed Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import TEST_JWT_SECRET, migrate  # noqa: E402
from tests.servers import keel_serve, scaled_env, sign_up  # noqa: E402

PART = "publishing"  # bench/run.py --only publishing runs this, and only this
# 32 publishers in a closed loop: group commit batches what arrives during a transaction, so the batch can be no
# larger than this; at 2 000 msg/s and p99 <= 50 ms a closed loop needs rate x latency = 32-100 in flight
SUBSCRIBERS, PUBLISHERS = 100, 32
PG_URL = os.environ.get("KEEL_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/keel_test_commit")
PY_SPY: str | None = None
REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/2")


async def scenario(
    url: str,
    token: str,
    channel: str,
    pid: int,
    seconds: float,
    subscribers: subprocess.Popen[str] | None,
    publishers: int,
) -> list[str]:
    ws_url = url.replace("http://", "ws://") + "/ws"
    headers = {"Authorization": f"Bearer {token}"}

    async def socket() -> ClientConnection:
        return await connect(ws_url, additional_headers=headers, compression=None, max_queue=None, open_timeout=60)

    process = psutil.Process(pid)
    lines = []
    for via in ("REST", "WS"):
        latencies: list[float] = []

        async def rest(i: int, deadline: float, latencies: list[float]) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            head = (
                f"POST /api/v1/channels/{channel}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\n"
            )
            n = 0
            while (start := time.perf_counter()) < deadline:
                payload = json.dumps({"body": f"r{i}-{n}"}).encode()
                writer.write(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                response = await reader.readuntil(b"\r\n\r\n")
                length = int(response.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                assert response.startswith(b"HTTP/1.1 201"), response
                latencies.append((time.perf_counter() - start) * 1000)
                n += 1
            writer.close()

        async def ws_publisher(i: int, deadline: float, latencies: list[float]) -> None:
            ws = await socket()
            n = 0
            while (start := time.perf_counter()) < deadline:
                await ws.send(json.dumps({"type": "publish", "channel": channel, "body": f"w{i}-{n}", "ref": str(n)}))
                reply = json.loads(await ws.recv())
                assert reply["type"] == "published", reply
                latencies.append((time.perf_counter() - start) * 1000)
                n += 1
            await ws.close()

        publisher = rest if via == "REST" else ws_publisher
        cpu_before, wall = sum(process.cpu_times()[:2]), time.perf_counter()
        with py_spy(pid, f"{via}-{subscribers is not None}"):
            await asyncio.gather(*(publisher(i, wall + seconds, latencies) for i in range(publishers)))
        wall = time.perf_counter() - wall
        await asyncio.sleep(1)  # the fan-out's tail
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        delivered = ""
        if subscribers is not None:
            async with httpx.AsyncClient() as client:
                last_seq = (await client.get(f"{url}/api/v1/channels/{channel}", headers=headers)).json()["last_seq"]
            report = await asyncio.to_thread(_expect, subscribers, last_seq)
            assert report["min"] == report["max"] == len(latencies), (report, len(latencies))
            assert not report["short"], report
            assert not report["broken"], report
            delivered = f", {report['received']} delivered in order"
        lines.append(
            f"{via}: {len(latencies) / wall:.0f} msg/s, p99 {p99:.0f} ms, server CPU {cpu / len(latencies) * 1000:.2f}"
            f" ms/msg ({len(latencies)} msgs{delivered})"
        )
    return lines


def _expect(subscribers: subprocess.Popen[str], last_seq: int) -> dict[str, Any]:
    """Ask the subscriber process for what its sockets got up to `last_seq` (bench/subscribers.py)."""
    assert subscribers.stdin is not None
    assert subscribers.stdout is not None
    subscribers.stdin.write(f"expect {last_seq}\n")
    subscribers.stdin.flush()
    report: dict[str, Any] = json.loads(subscribers.stdout.readline())
    return report


@contextmanager
def py_spy(pid: int, name: str) -> Iterator[None]:
    """With --py-spy: the server's profile over the block, folded stacks in bench/results/publishing-*.txt."""
    if PY_SPY is None:
        yield
        return
    out = ROOT / "bench" / "results" / f"publishing-{name}-{pid}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--output", str(out)]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as spy:
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT


@contextmanager
def subscriber_process(url: str, token: str, channel: str, n: int) -> Iterator[subprocess.Popen[str] | None]:
    """bench/subscribers.py with `n` sockets subscribed to `channel` (None for none), on the client CPU."""
    if not n:
        yield None
        return
    host, port = url.removeprefix("http://").split(":")
    argv = [sys.executable, str(ROOT / "bench" / "subscribers.py"), host, port, token, channel, str(n)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", "the subscribers did not start"
            yield process
        finally:
            process.kill()


def run(
    label: str,
    src: Path | None,
    backend: str,
    seconds: float,
    subscribers: int = SUBSCRIBERS,
    publishers: int = PUBLISHERS,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # this checkout's src unless told otherwise: the shared venv's editable install may be another worktree's
        extra = {"PYTHONPATH": str(src or ROOT / "src")}
        settings = {"KEEL_WS_SEND_QUEUE": "10000", "KEEL_MAX_STREAMS_PER_USER": "1000"}
        if backend == "sqlite":
            env: dict[str, str | None] = {
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/keel.db",
                "KEEL_JWT_SECRET": TEST_JWT_SECRET,
                **settings,
                **extra,
            }
            asyncio.run(migrate(f"sqlite+aiosqlite:///{tmp}/keel.db"))
        else:
            env = scaled_env(PG_URL, REDIS_URL, **settings, **extra)
        with keel_serve(env, Path(tmp)) as server:
            token = sign_up(server.url)["access_token"]
            channel = httpx.post(
                f"{server.url}/api/v1/channels", json={"name": "bench"}, headers={"Authorization": f"Bearer {token}"}
            ).json()["id"]
            with subscriber_process(server.url, token, channel, subscribers) as process:
                lines = asyncio.run(
                    scenario(server.url, token, channel, server.process.pid, seconds, process, publishers)
                )
    load = os.getloadavg()[0]
    for line in lines:
        print(f"{label:6} {backend:10} {subscribers:3} subs {publishers:3} pubs {line}  load {load:.1f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout's src directory, run first per backend")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS, help="0: the cost without fan-out")
    parser.add_argument("--publishers", type=int, default=PUBLISHERS, help="concurrent publishers (closed loop)")
    parser.add_argument("--py-spy", help="py-spy's path: profile the server during each row (costs it CPU)")
    args = parser.parse_args(argv)
    global PY_SPY  # a switch for the whole run
    PY_SPY = args.py_spy
    for backend in args.backends.split(","):
        if args.before:
            run("before", args.before, backend, args.seconds, args.subscribers, args.publishers)
        run("after", None, backend, args.seconds, args.subscribers, args.publishers)


if __name__ == "__main__":
    main()
