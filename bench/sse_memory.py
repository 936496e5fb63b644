"""What one idle `GET /events` stream keeps in the server: tracemalloc and gc counts, in-process (issue 16 goal 3).

    PYTHONPATH=src .venv/bin/python bench/sse_memory.py [-n 2000] [--warm 200] [--top 25] [--frames 12]

keel runs in this process as `keel serve` runs it (uvicorn, uvloop, keel.http.server's httptools protocol, so event
streams get direct writes), on a SQLite database in a temporary directory; a client subprocess (bench/sockets.py's raw
requests, bearer token, the bench channel) opens --warm streams, then after a snapshot N more, each counted once its
opening `retry:` has arrived. Printed: the Python heap per stream (tracemalloc, grouped by the traceback's innermost
--frames frames, largest first), the objects alive per stream by type (gc), and the RSS per stream (tracemalloc's own
overhead included, so read it only against another run of this script). Light on CPU: one core for the few seconds
the streams take to open.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from pathlib import Path

import psutil

import realtime
from run import free_port, keel_bench_token, migrate_keel

CLIENT = textwrap.dedent(
    """
    import select, socket, sys
    port, head, warm, n = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
    socks = []
    def open_streams(count):
        poll, waiting = select.epoll(), {}
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head)
            socks.append(s)
            waiting[s.fileno()] = s
            poll.register(s, select.EPOLLIN)
            if len(waiting) >= 100:
                wait(poll, waiting, 50)
        wait(poll, waiting, 0)
    def wait(poll, waiting, down_to):
        while len(waiting) > down_to:
            for fd, _ in poll.poll(30):
                data = waiting[fd].recv(65536)
                assert data.startswith(b"HTTP/1.1 200") or b"retry:" in data, data[:200]
                if b"retry:" in data:
                    poll.unregister(fd)
                    del waiting[fd]
    open_streams(warm)
    print("warm", flush=True)
    sys.stdin.readline()
    open_streams(n)
    print("open", flush=True)
    sys.stdin.readline()
    """
)


def where(trace: tracemalloc.Traceback) -> str:
    return " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(trace))


def types() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


async def measure(port: int, token: str, args: argparse.Namespace) -> None:
    channel = await asyncio.to_thread(realtime.bench_channel, port, token)
    head = (
        f"GET /events?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        str(port),
        head,
        str(args.warm),
        str(args.n),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdin is not None
    assert client.stdout is not None
    assert (await client.stdout.readline()).strip() == b"warm"
    await asyncio.sleep(1)
    counts_before = types()
    before = tracemalloc.take_snapshot()
    rss_before = psutil.Process().memory_info().rss
    client.stdin.write(b"go\n")
    assert (await client.stdout.readline()).strip() == b"open"
    await asyncio.sleep(1)
    counts_after = types()
    after = tracemalloc.take_snapshot()
    rss_after = psutil.Process().memory_info().rss
    n = args.n
    stats = after.compare_to(before, "traceback")
    total = sum(s.size_diff for s in stats)
    print(
        f"N={n}: Python heap {total / n / 1024:.2f} KiB per stream, RSS {(rss_after - rss_before) / n / 1024:.2f} KiB"
    )
    for stat in stats[: args.top]:
        if stat.size_diff / n < 8:
            break
        print(f"{stat.size_diff / n:8.1f} B {stat.count_diff / n:5.1f} blocks  {where(stat.traceback)}")
    print("objects per stream by type:")
    diff = counts_after - counts_before
    for name, count in diff.most_common(args.top):
        if count / n < 0.5:
            break
        print(f"  {count / n:5.2f} {name}")
    client.stdin.write(b"done\n")
    client.stdin.close()
    await client.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()
    realtime.raise_fd_limit(0)
    with tempfile.TemporaryDirectory(prefix="keel-sse-memory-") as tmp:
        workdir = Path(tmp)
        migrate_keel(workdir)
        token = keel_bench_token(workdir, workdir, name="sse-memory-setup", env=realtime.KEEL_REALTIME_ENV)
        os.chdir(workdir)
        os.environ.update(realtime.KEEL_REALTIME_ENV)
        import uvicorn
        import uvloop

        from keel.http.server import KeelHttpToolsProtocol

        port = free_port()
        config = uvicorn.Config(
            "keel.asgi:app",
            factory=True,
            port=port,
            loop="none",
            http=KeelHttpToolsProtocol,
            ws="wsproto",
            proxy_headers=False,  # as keel.cli runs uvicorn
            log_level="warning",
        )
        server = uvicorn.Server(config)

        async def run() -> None:
            serving = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110 (uvicorn's flag, no event to wait on)
                await asyncio.sleep(0.05)
            try:
                await measure(port, token, args)
            finally:
                server.should_exit = True
                await serving

        tracemalloc.start(args.frames)
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
