"""Where keel's own per-request CPU goes: cProfile over keel's ASGI app, driven in one process with no server.

`.venv/bin/python bench/request_profile.py [--requests 20000] [--path /api/v1/public]`

The gap between keel and plain Litestar on the same server (bench/server_cpu.py) is keel's own stack, which no
server choice removes. This drives `create_app(Settings(...))` as `keel serve` configures it for bench/run.py (SQLite,
limiter on and never tripping, access log at `warning`: off, no OTLP endpoint) with a minimal ASGI caller, 64
requests at a time on uvloop, under cProfile, and prints each part's inclusive share of the profiled time (parts
nest: the edge middleware contains everything under it) and the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
from collections.abc import Sequence
from typing import Any

import uvloop

CONCURRENCY = 64
# (label, (file substring, function name)): inclusive time of the outermost call of each
PARTS = (
    ("edge middleware (request id, security headers, access log, metrics)", ("keel/http/middleware.py", "__call__")),
    ("auth middleware (+ RequireCaller)", ("keel/http/auth.py", "__call__")),
    ("rate limit middleware", ("keel/ratelimit/deps.py", "__call__")),
    ("Litestar routing + handler + response", ("litestar/routes/http.py", "handle")),
    ("metrics: observe_request", ("keel/metrics.py", "observe_request")),
)


async def drive(requests: int, path: str, profile: cProfile.Profile) -> dict[int, int]:
    from inprocess import bench_settings, get_caller, migrated_sqlite_url
    from keel.logs import configure_logging
    from keel.main import create_app

    settings = bench_settings(await migrated_sqlite_url("keel-profile-"), KEEL_LOG_LEVEL="warning")
    configure_logging(settings.log_format, "warning")
    app = create_app(settings)
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"profile/1"), (b"accept", b"*/*")]
    statuses: dict[int, int] = {}
    one = get_caller(app, path, headers, statuses)

    async with app.lifespan():
        gc.collect()
        gc.freeze()
        for _ in range(1000 // CONCURRENCY):  # warm-up, unprofiled
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        profile.enable()
        for _ in range(requests // CONCURRENCY):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        profile.disable()
    return statuses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--path", default="/api/v1/public")
    options = parser.parse_args(argv)
    profile = cProfile.Profile()
    statuses = uvloop.run(drive(options.requests, options.path, profile))
    stats = pstats.Stats(profile)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(own for (_, _, own, _, _) in entries.values())
    done = sum(statuses.values())
    print(f"{done} requests, statuses {statuses}; profiled CPU {total / done * 1e6:.1f} µs per request (cProfile")
    print("inflates every call, so read the shares, not the µs)\n")
    print("| part | inclusive share |\n|---|---:|")
    for label, (where, name) in PARTS:
        cumulative = max(
            (cum for (file, _, func), (_, _, _, cum, _) in entries.items() if where in file and func == name),
            default=0.0,
        )
        print(f"| {label} | {cumulative / total:.0%} |")
    print("\n| function (own time) | share |\n|---|---:|")
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:15]
    for (file, line, func), (_, _, own, _, _) in ranked:
        short = "/".join(file.rsplit("/", 3)[-3:])
        print(f"| `{short}:{line} {func}` | {own / total:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
