"""Observability's CPU cost per request, measured in one process with the configurations interleaved.

`.venv/bin/python bench/paired.py [--cycles 30] [--block 640] [--samplers b,a,0] [--path /api/v1/public]`

Requests per second, and even a server's CPU time per request, move by 15-40 % on a machine other sessions share.
This measures the difference that matters, paired: keel's ASGI app (`create_app(Settings(...))`, its lifespan
started, startup objects frozen as `keel serve` does) is driven directly in one process by a minimal ASGI server
(scope, receive, send), 64 requests at a time (asyncio.gather) on uvloop, and the configuration switches every
`--block` requests, in an order that rotates every cycle:

- `off`: no tracer, no access log, no metrics (`keel.metrics.observe_request` swapped for a no-op): the floor;
- `metrics`, `log`: one of the two on; `c`: both (issue 11's (c): no OTLP endpoint);
- `traced`: (c) plus tracing (`telemetry.tracer` set), exporting over OTLP/HTTP to bench/otlp_sink.py.

Each block's CPU is the process's (`time.process_time`: the event loop's thread and the exporter's) and the loop
thread's alone (`time.thread_time`); every block ends with a pause of 0.3 s (the exporter wakes every 100 ms,
`OTEL_BSP_SCHEDULE_DELAY`), so what a block's spans cost to encode and send is charged to that block, not the
next. The figure per configuration is the median over cycles of (its µs per request minus `off`'s µs per request
in the same cycle). `--path /api/v1/protected` signs the bench user up and logs it in first (as bench/run.py
does), and sends its token with every request. The access line is written by the real AccessLog to stderr, which
points at /dev/null; the middleware, the router, the rate limiter (in-process, never tripping) and the handler run
as under `keel serve`.

Each sampler runs in a child process of its own (the sampler is fixed at startup): `b` is keel's default
(parent-based 10 %), `a` is `OTEL_TRACES_SAMPLER=always_on`, `0` records nothing (`OTEL_TRACES_SAMPLER_ARG=0`:
the unsampled path). Prints a markdown table; nothing is written.

`--instructions` counts instructions instead of CPU time: each child runs under valgrind's callgrind, which counts
what every thread executes, whatever else the machine is doing. The warm-up runs uninstrumented; each measured block
is bracketed by `callgrind_control --dump`, with the garbage collector held off and the sampler's draws seeded alike,
and a configuration's figure is its least block (a timer's work lands in whichever block is running). Counts repeat
to within a few hundred instructions a request, where CPU time on a shared machine moves by tens of microseconds.
They are not time: cache misses and the kernel's work are not in them. `--cycles 3 --block 256` takes about two
minutes a sampler.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from inprocess import Callgrind, under_callgrind
from run import BENCH_USER, FORM_TYPE, login_form

ROOT = Path(__file__).resolve().parent.parent
SINK = ROOT / "bench" / "otlp_sink.py"
CONFIGS = ("off", "metrics", "log", "c", "traced")
SAMPLERS = {
    "b": {},
    "a": {"OTEL_TRACES_SAMPLER": "always_on"},
    "0": {"OTEL_TRACES_SAMPLER_ARG": "0"},
}
NEVER_TRIPS = "1000000000/s burst 1000000000"
CONCURRENCY = 64
SCHEDULE_DELAY_MS = 100  # the exporter's wake-up: each block's spans leave during the pause that ends it
PAUSE_S = 0.3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the child: one sampler, every configuration ---------------------------------------------------------------


async def measure(path: str, cycles: int, block: int, sink_port: int, callgrind: Callgrind | None) -> dict[str, Any]:
    import prometheus_client
    from sqlalchemy.ext.asyncio import create_async_engine

    from inprocess import call, get_caller
    from keel import db, metrics, telemetry
    from keel.http.middleware import EdgeMiddleware
    from keel.logs import AccessLog, configure_logging
    from keel.main import create_app
    from keel.settings import Settings

    workdir = tempfile.mkdtemp(prefix="keel-paired-")
    url = f"sqlite+aiosqlite:///{workdir}/keel.db"
    engine = create_async_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    settings = Settings(
        _env_file=None,
        DATABASE_URL=url,
        KEEL_JWT_SECRET="keel-bench-only-hs256-secret-0123456789abcdef",  # noqa: S106  # a bench secret
        KEEL_RATE_LIMIT=NEVER_TRIPS,
        KEEL_AUTH_RATE_LIMIT=NEVER_TRIPS,
        KEEL_LOG_FORMAT="json",
        KEEL_LOG_LEVEL="info",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    configure_logging(settings.log_format, "warning")  # keel's other records stay quiet; the access log is ours
    app = create_app(settings)
    edge = app.asgi_handler
    assert isinstance(edge, EdgeMiddleware)
    access_log = AccessLog("json")
    observe = metrics.observe_request

    def no_metrics(method: str, route: str, status: int, nanoseconds: int) -> None:
        pass

    statuses: dict[int, int] = {}

    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"paired/1"), (b"accept", b"*/*")]
    one = get_caller(app, path, headers, statuses)  # Litestar.__call__ puts itself in the scope, then the edge runs

    async def send_block() -> None:
        for _ in range(block // CONCURRENCY):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))

    async def run_block() -> tuple[float, float]:
        if callgrind is not None:
            return await counted_block(callgrind)
        cpu, loop_cpu = time.process_time(), time.thread_time()
        await send_block()
        await asyncio.sleep(PAUSE_S)  # every configuration pauses alike; a traced block's spans are exported meanwhile
        return (time.process_time() - cpu) / block * 1e6, (time.thread_time() - loop_cpu) / block * 1e6

    async def counted_block(callgrind: Callgrind) -> tuple[float, float]:
        """run_block's figures as instructions a request: the process's and the loop thread's."""

        async def block_and_its_spans() -> None:
            await send_block()
            # The block's spans go in one batch from the export thread, as a server at a few thousand requests a
            # second sends them every 100 ms (under valgrind, 100 ms of wall time holds a handful of requests: a
            # POST for every few spans). Its schedule is off (see main): it is woken here, and the flush waits for
            # its export.
            provider: Any = telemetry._provider
            provider.queue._wake.set()
            await asyncio.sleep(PAUSE_S)
            provider.force_flush()

        random.seed(0)  # the same requests sampled in every block
        counted, loop_counted = await callgrind.count(block_and_its_spans)
        return counted / block, loop_counted / block

    async with app.lifespan():
        if path == "/api/v1/protected":  # as bench/run.py's keel_bench_token: sign up, log in, send the token
            created, _ = await call(app, "POST", "/api/v1/users", json.dumps(BENCH_USER).encode(), b"application/json")
            status, body = await call(app, "POST", "/api/v1/auth/token", login_form().encode(), FORM_TYPE.encode())
            assert (created, status) == (201, 200), (created, status, body[:200])
            token = json.loads(body)["access_token"]
            headers.append((b"authorization", f"Bearer {token}".encode()))
        traced = telemetry.tracer
        assert traced is not None, "tracing did not start"
        gc.collect()
        gc.freeze()

        def configure(name: str) -> None:
            telemetry.tracer = traced if name == "traced" else None
            edge.access_log = access_log if name in ("log", "c", "traced") else None
            metrics.observe_request = observe if name in ("metrics", "c", "traced") else no_metrics

        for name in CONFIGS:  # warm-up: caches, the first export's connection
            configure(name)
            await run_block()
        if callgrind is not None:
            callgrind.start()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
        for cycle in range(cycles):
            order = CONFIGS[cycle % len(CONFIGS) :] + CONFIGS[: cycle % len(CONFIGS)]
            for name in order:
                configure(name)
                results[name].append(await run_block())
        telemetry.tracer = traced  # the lifespan's shutdown flushes and clears it
        metrics.observe_request = observe
    dropped = sum(
        s.value
        for m in prometheus_client.REGISTRY.collect()
        if m.name == "keel_spans_dropped"
        for s in m.samples
        if s.name.endswith("_total")
    )
    if callgrind is not None:
        # A count has no noise to pair away, but a timer's work (a few million instructions) lands in whichever block
        # is running when it fires: each configuration's least count is its own, without it
        least = {name: min(r[0] for r in results[name]) for name in CONFIGS}
        least_loop = {name: min(r[1] for r in results[name]) for name in CONFIGS}
        extra = {
            name: {"cpu": least[name] - least["off"], "loop": least_loop[name] - least_loop["off"]}
            for name in CONFIGS[1:]
        }
        return {"off": least["off"], "extra": extra, "statuses": statuses, "dropped": dropped}
    extra = {}
    for name in CONFIGS[1:]:
        pairs = zip(results[name], results["off"], strict=True)
        diffs = [(cpu - off_cpu, loop - off_loop) for (cpu, loop), (off_cpu, off_loop) in pairs]
        extra[name] = {
            "cpu": statistics.median(d[0] for d in diffs),
            "loop": statistics.median(d[1] for d in diffs),
        }
    return {
        "off": statistics.median(r[0] for r in results["off"]),
        "extra": extra,
        "statuses": statuses,
        "dropped": dropped,
    }


def child(args: argparse.Namespace) -> None:
    import uvloop

    errors = os.fdopen(os.dup(2), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the access lines go to stderr, as under `keel serve` with its log file
    try:
        callgrind = Callgrind(args.callgrind_dir) if args.callgrind_dir else None
        result = uvloop.run(measure(args.path, args.cycles, args.block, args.sink_port, callgrind))
    except BaseException:
        traceback.print_exc(file=errors)
        raise SystemExit(1) from None
    print(json.dumps(result), flush=True)


# -- the parent: the sink, one child per sampler, the table ----------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--block", type=int, default=640)
    parser.add_argument("--samplers", default="b,a,0", help="comma-separated among b (10 %%), a (always_on), 0")
    parser.add_argument("--path", default="/api/v1/public")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under valgrind's callgrind, not CPU time"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-dir", help=argparse.SUPPRESS)  # the child's, under callgrind
    parser.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(SINK), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        sink.stdout.readline()  # "listening on ..."
        rows = {}
        for key in args.samplers.split(","):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KEEL_", "DATABASE_URL"))}
            env.update(
                SAMPLERS[key],
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",  # the exporter reads these itself
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                # under callgrind, a block's spans are flushed at its end (see run_block)
                OTEL_BSP_SCHEDULE_DELAY=str(3_600_000 if args.instructions else SCHEDULE_DELAY_MS),
            )
            argv = [sys.executable, __file__, "--child", key, "--sink-port", str(port), "--path", args.path]
            argv += ["--cycles", str(args.cycles), "--block", str(args.block)]
            if args.instructions:  # the child reads its dumps from a directory of its own
                out_dir = tempfile.mkdtemp(prefix="keel-callgrind-")
                print(f"sampler {key}: callgrind's dumps in {out_dir}", file=sys.stderr, flush=True)
                argv = under_callgrind([*argv, "--callgrind-dir", out_dir], out_dir)
            done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
            rows[key] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"sampler {key}: {rows[key]}", file=sys.stderr, flush=True)
    finally:
        sink.terminate()
        sink.wait()
    labels = {"b": "(b) default sampler, 10 %", "a": "(a) always_on", "0": "nothing sampled (ratio 0)"}
    print(f"`GET {args.path}`, {args.cycles} cycles x {args.block} requests a configuration, {CONCURRENCY} at a time\n")
    unit = "instructions" if args.instructions else "µs CPU"
    head = ("child (sampler)", f"off: {unit} / request", "+ metrics", "+ access log", "(c) both", "(c) + tracing")
    loop = ("of which the loop thread",)
    print("| " + " | ".join((*head, *loop)) + " |")
    print("|---" * (len(head) + len(loop)) + "|")
    for key, row in rows.items():
        e = row["extra"]
        cells = [f"{row['off']:.1f}", *(f"{e[name]['cpu']:+.1f}" for name in ("metrics", "log", "c"))]
        cells += [f"**{e['traced']['cpu']:+.1f}**", f"{e['traced']['loop']:+.1f}"]
        print(f"| {labels[key]} | " + " | ".join(cells) + " |")
    for key, row in rows.items():
        print(f"\n{labels[key]}: statuses {row['statuses']}, spans dropped {row['dropped']:.0f}", end="")
    print()


if __name__ == "__main__":
    main()
