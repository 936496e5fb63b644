"""What a realtime socket costs keel on Granian and on uvicorn: the figures behind deploy/'s two pools.

`.venv/bin/python bench/granian_sockets.py [--sockets 500] [--streams 1100]`

For each server, a fresh `keel serve --server <server>` (pinned to CPU 0, SQLite, as bench/realtime.py runs keel):
`--sockets` idle WebSockets, each subscribed to the bench channel, and the server tree's RSS before and after, per
socket; then `--streams` SSE streams opened at once, each read to its first event, and how many are still open
(Granian's default caps them at 1 024 per worker: the rest wait). Prints a markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from realtime import KEEL_REALTIME_ENV, KIB, close_all, connect_all, raise_fd_limit, serving, sse_memory
from run import KEEL_SERVE, Case, ensure_cpus, keel_bench_token, migrate_keel

SERVERS = ("uvicorn", "granian")


async def measure(case: Case, token: str, logs: Path, sockets: int, streams: int) -> tuple[float, int, str]:
    with serving(case, token, logs / f"{case.id}.server.log") as server:
        await asyncio.sleep(1)
        before = server.rss()
        clients = await connect_all(server, sockets)
        await asyncio.sleep(3)
        after = server.rss()
        await close_all(clients)
        sse = await sse_memory(server, streams)
    return (after - before) / sockets / KIB, sse.streams, sse.first_error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=500, help="idle WebSockets per server")
    parser.add_argument("--streams", type=int, default=1100, help="SSE streams opened at once per server")
    options = parser.parse_args(argv)
    ensure_cpus()
    raise_fd_limit(options.sockets + options.streams)
    rows = []
    with tempfile.TemporaryDirectory(prefix="keel-granian-sockets-") as directory:
        workdir = Path(directory)
        logs = workdir / "logs"
        logs.mkdir()
        migrate_keel(workdir)
        token = keel_bench_token(workdir, logs, env=KEEL_REALTIME_ENV)
        for server in SERVERS:
            argv_ = (*KEEL_SERVE, "--server", server)
            case = Case(f"keel-{server}", "keel", server, "/healthz", argv_, workdir, KEEL_REALTIME_ENV)
            kib, open_streams, error = asyncio.run(measure(case, token, logs, options.sockets, options.streams))
            rows.append((server, kib, open_streams, error))
            print(f"  {server}: {kib:.1f} KiB per idle WebSocket, {open_streams}/{options.streams} SSE streams open")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(
        f"| server | KiB per idle WebSocket ({options.sockets}) | SSE streams open of {options.streams} | first error |"
    )
    print("|---|---:|---:|---|")
    for server, kib, open_streams, error in rows:
        print(f"| keel on {server} | {kib:.1f} | {open_streams} | {error or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
