"""keel's own per-request stack, production configuration, as CPU µs per request in one process: this tree against
another source tree (default: the main checkout), interleaved.

`.venv/bin/python bench/stack_cpu.py [--rounds 6] [--requests 6400] [--against /work/main/src]
[--path /api/v1/public|/api/v1/protected] [--cookie]`

Each round starts one child per source tree (PYTHONPATH=<tree>/src, so the shared venv's editable install does not
decide), alternating which goes first. A child builds `create_app(Settings(...))` with the production stack on:
request id, security headers, CORS (`KEEL_CORS_ORIGINS`, and every request carries a listed `Origin`), compression,
the in-process limiter (never tripping), the access log at info (JSON, to stderr = /dev/null), metrics, tracing
configured with an OTLP endpoint and the default sampler at ratio 0 (`OTEL_TRACES_SAMPLER_ARG=0`: the unsampled
path, nothing exported). It drives the ASGI app directly (no server: the server's share is bench/server_cpu.py's),
64 requests at a time on uvloop, and reports `time.process_time` per request over `--requests` after a warm-up.
`/api/v1/protected` sends a bearer token of a user it signs up first (`--cookie`: the same access token as the
`keel_session` cookie, the browser's way). Prints each round and the medians.

`--peer` measures the plain Litestar peer (../shared/bench/peers/litestar_app.py, the same two endpoints, JWT
decoded per request on /protected) in place of the other tree, on keel's own venv: the same Litestar release, so
the difference is what keel's stack adds. `--instructions` counts instructions a request under valgrind's callgrind
instead of CPU time (bench/inprocess.py's Callgrind: the least of `--rounds` blocks of 256 requests, the collector
held off), which repeats on a shared machine; one round of each child is then enough.

`--steps` (with `--instructions`) takes keel's stack apart one piece at a time, cumulatively, in the order of STEPS,
and counts this tree after each step, then the peer: the table of where keel's request goes beyond plain Litestar.
The first steps are settings and headers (what a deployment can turn off); the later ones take out a layer of
keel's code (the edge, a route middleware, a Litestar option keel sets) by editing create_app's composition in the
child, which only a bench may do.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from inprocess import Callgrind, under_callgrind

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "https://app.example.com"
CONCURRENCY = 64
FORM = b"application/x-www-form-urlencoded"
BENCH_USER = {"username": "bench_user", "email": "bench_user@example.com", "password": "bench-password-0123456789"}


# (name, what it takes out), cumulatively in this order
STEPS: tuple[tuple[str, str], ...] = (
    ("tracing", "tracing configured (no OTLP endpoint)"),
    ("access-log", "the access log (level warning)"),
    ("origin", "the listed `Origin` header (CORS work)"),
    ("accept-encoding", "`Accept-Encoding: gzip, br` (compression's negotiation)"),
    ("rate-limit", "the limiter's policies (`KEEL_RATE_LIMIT=off`: its layer still runs)"),
    ("compression", "CompressionMiddleware (the layer)"),
    ("realtime-routes", "RealtimeRoutes (the layer in front of /ws and /events)"),
    ("edge", "EdgeMiddleware: request id, security headers, metrics, its send wrapper"),
    ("password-admission", "PasswordAdmission (route middleware)"),
    ("require-caller", "RequireCaller (route middleware)"),
    ("rate-limit-layer", "RateLimitMiddleware (route middleware)"),
    ("auth", "AuthMiddleware (route middleware); with no route middleware left, Litestar's inner exception layer"),
    ("before-request", "`before_request=require_declared_media_type`"),
    ("request-class", "`request_class=KeelRequest`"),
    ("plugins", "the SequentialDependencies plugin"),
)
ROUTE_MIDDLEWARE = {
    "password-admission": "PasswordAdmission",
    "require-caller": "RequireCaller",
    "rate-limit-layer": "RateLimitMiddleware",
    "auth": "AuthMiddleware",
}
LITESTAR_OPTIONS = {"before-request": "before_request", "request-class": "request_class", "plugins": "plugins"}


def without_layers(without: frozenset[str]) -> None:
    """Edit keel.main's composition for the layer steps of `without` (a bench's ablation, never keel's code)."""
    import importlib

    if not without:
        return
    main = importlib.import_module("keel.main")
    litestar = main.Litestar

    def composed(**options: Any) -> Any:
        gone = {ROUTE_MIDDLEWARE[name] for name in without if name in ROUTE_MIDDLEWARE}
        options["middleware"] = [m for m in options["middleware"] if m.__name__ not in gone]
        for name in without & set(LITESTAR_OPTIONS):
            options.pop(LITESTAR_OPTIONS[name])
        return litestar(**options)

    setattr(main, "Litestar", composed)  # noqa: B010  # setattr: a module attribute mypy would not let us assign
    for step, name in (
        ("compression", "CompressionMiddleware"),
        ("realtime-routes", "RealtimeRoutes"),
        ("edge", "EdgeMiddleware"),
    ):
        if step in without:
            setattr(main, name, lambda app, *args, **kwargs: app)


PEER = ROOT.parent / "shared" / "bench" / "peers" / "litestar_app.py"
PEER_SECRET = "bench-secret-key-please-change-0123456789abcdef"  # noqa: S105  # the peer's own bench secret


def peer_app() -> Any:
    """The plain Litestar peer's app, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("litestar_peer", PEER)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # Litestar reads its handlers' hints there
    spec.loader.exec_module(module)
    return module.app


async def measure(
    path: str,
    requests: int,
    peer: bool,
    callgrind: Callgrind | None,
    cookie: bool,
    without: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    from inprocess import bench_settings, call, get_caller, migrated_sqlite_url
    from keel import telemetry
    from keel.logs import configure_logging
    from keel.main import create_app

    extra: dict[str, Any] = {}
    if "tracing" not in without:  # nothing is sampled, so nothing is sent
        extra.update(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    if "rate-limit" in without:
        extra.update(KEEL_RATE_LIMIT="off", KEEL_AUTH_RATE_LIMIT="off")
    settings = bench_settings(
        await migrated_sqlite_url("keel-stack-"),
        KEEL_LOG_FORMAT="json",
        KEEL_LOG_LEVEL="warning" if "access-log" in without else "info",
        KEEL_CORS_ORIGINS=[ORIGIN],
        **extra,
    )
    configure_logging(settings.log_format, "warning")
    without_layers(without)
    app = peer_app() if peer else create_app(settings)
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"stack/1"), (b"accept", b"*/*")]
    if "accept-encoding" not in without:
        headers.append((b"accept-encoding", b"gzip, br"))
    if "origin" not in without:
        headers.append((b"origin", ORIGIN.encode()))
    statuses: dict[int, int] = {}
    one = get_caller(app, path, headers, statuses)

    async with app.lifespan():
        assert peer or (telemetry.tracer is None) == ("tracing" in without), "tracing is not as asked"
        if peer and path.endswith("/protected"):  # the peer's token: HS256 with its secret, as make_token.py signs
            import jwt

            headers.append((b"authorization", b"Bearer " + jwt.encode({"sub": "bench"}, PEER_SECRET).encode()))
        elif path.endswith("/protected"):
            created, _ = await call(app, "POST", "/api/v1/users", json.dumps(BENCH_USER).encode(), b"application/json")
            form = f"grant_type=password&username={BENCH_USER['username']}&password={BENCH_USER['password']}"
            status, body = await call(
                app, "POST", "/api/v1/auth/token", form.encode(), b"application/x-www-form-urlencoded"
            )
            assert (created, status) == (201, 200), (created, status, body[:200])
            token = json.loads(body)["access_token"]
            headers.append(
                (b"cookie", f"keel_session={token}".encode())
                if cookie
                else (b"authorization", f"Bearer {token}".encode())
            )
        gc.collect()
        gc.freeze()
        for _ in range(1280 // CONCURRENCY):  # warm-up
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        statuses.clear()
        if callgrind is not None:
            return {"us": await least_block(callgrind, one, requests), "statuses": statuses}
        cpu = time.process_time()
        for _ in range(requests // CONCURRENCY):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        cpu = time.process_time() - cpu
    return {"us": cpu / requests * 1e6, "statuses": statuses}


async def least_block(callgrind: Callgrind, one: Callable[[], Awaitable[None]], blocks: int) -> float:
    """The fewest instructions a request over `blocks` blocks of 256 (a timer's work lands in whichever block runs)."""
    callgrind.start()

    async def block() -> None:
        for _ in range(256 // CONCURRENCY):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))

    counts = [(await callgrind.count(block))[0] / 256 for _ in range(blocks)]
    return min(counts)


def child(
    path: str, requests: int, peer: bool, callgrind_dir: str | None, cookie: bool, without: frozenset[str]
) -> None:
    import uvloop

    errors = os.fdopen(os.dup(2), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the access lines go to stderr, as under `keel serve`
    try:
        callgrind = Callgrind(callgrind_dir) if callgrind_dir else None
        result = uvloop.run(measure(path, requests, peer, callgrind, cookie, without))
    except BaseException:
        import traceback

        traceback.print_exc(file=errors)
        raise SystemExit(1) from None
    print(json.dumps(result), flush=True)


def run_child(
    src: Path | None, path: str, requests: int, instructions: bool, cookie: bool, without: Sequence[str] = ()
) -> float:
    """One child's figure: keel from the source tree `src` with the steps `without` taken, or the peer (`src` None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KEEL_", "DATABASE_URL"))}
    env.update(PYTHONPATH=str(src or ROOT / "src"), OTEL_TRACES_SAMPLER_ARG="0")
    argv = [sys.executable, __file__, "--child", "--path", path, "--requests", str(requests)]
    if src is None:
        argv.append("--peer")
    if cookie:
        argv.append("--cookie")
    for name in without:
        argv += ["--without", name]
    if instructions:
        out_dir = tempfile.mkdtemp(prefix="keel-callgrind-")
        argv = under_callgrind([*argv, "--callgrind-dir", out_dir], out_dir)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if set(result["statuses"]) != {"200"}:
        raise SystemExit(f"{src}: statuses {result['statuses']}")
    return float(result["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=6400)
    parser.add_argument("--path", default="/api/v1/public")
    parser.add_argument("--against", type=Path, default=ROOT.parent / "main" / "src")
    parser.add_argument("--peer", action="store_true", help="against the plain Litestar peer, not another tree")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument("--cookie", action="store_true", help="the access token as the keel_session cookie")
    parser.add_argument("--steps", action="store_true", help="count after each step of STEPS, then the peer")
    parser.add_argument("--without", action="append", default=[], choices=[n for n, _ in STEPS])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.path, args.requests, args.peer, args.callgrind_dir, args.cookie, frozenset(args.without))
        return
    if args.steps:
        steps(args.path, args.rounds)
        return
    against = "plain Litestar" if args.peer else str(args.against)
    trees: dict[str, Path | None] = {"this tree": ROOT / "src", against: None if args.peer else args.against}
    unit = "instructions" if args.instructions else "µs"
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for round_ in range(1 if args.instructions else args.rounds):  # a count needs no second round
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            blocks = args.rounds if args.instructions else args.requests  # under callgrind: blocks of 256
            figures[name].append(run_child(trees[name], args.path, blocks, args.instructions, args.cookie))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {figures[n][-1]:.1f} {unit}" for n in trees), flush=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mine, theirs = (statistics.median(figures[n]) for n in trees)
    diffs = [a - b for a, b in zip(figures["this tree"], figures[against], strict=True)]
    print(f"\n{args.path}: this tree {mine:.1f} {unit}, {against} {theirs:.1f} {unit} per request (medians of")
    print(f"{len(diffs)}; ratio {mine / theirs:.2f}); paired difference median {statistics.median(diffs):+.1f} {unit};")
    print(f"load average {load}")


def steps(path: str, blocks: int) -> None:
    """The `--steps` table (instructions): keel whole, then after each step of STEPS, then the peer."""
    print(f"| `GET {path}`, in-app instructions a request | instructions | step |\n|---|---:|---:|")
    before = run_child(ROOT / "src", path, blocks, True, False)
    print(f"| keel, full production stack | {before:,.0f} | |", flush=True)
    for n, (_, what) in enumerate(STEPS):
        count = run_child(ROOT / "src", path, blocks, True, False, [name for name, _ in STEPS[: n + 1]])
        print(f"| … without {what} | {count:,.0f} | {count - before:+,.0f} |", flush=True)
        before = count
    print(f"| plain Litestar peer | {run_child(None, path, blocks, True, False):,.0f} | |")


if __name__ == "__main__":
    main()
