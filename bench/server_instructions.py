"""Issue 11's configurations counted in instructions inside the real server, which repeat to a fraction of a percent
where CPU time on this host moves by ±3-5 % (bench/cpu_per_request.py, the time method).

`.venv/bin/python bench/server_instructions.py [--requests 10240] [--only KEY ...] [--baseline-rev af44228]`

Every configuration of bench/observability.py (the af44228 baseline, the access log off, (c), (b), (a)) serves
`/api/v1/public` and `/api/v1/protected` as there, from `keel serve` started under valgrind's callgrind (counting
nothing until asked, a count per thread). After a warm-up the harness's own client opens 64 keep-alive connections,
has each answer once, turns counting on, sends exactly `--requests` requests (wrk's runs end with up to 64 in flight)
and reads the counts:

- the event loop's thread, a request: the request's own work, collections included where they fall;
- the other threads, a span sent: the export thread's encoding and POSTs over the spans it sent in the window, as
  the sink counts them in full batches of 512. Under valgrind the server runs ~30 times slower, so the harness sets
  OTEL_BSP_SCHEDULE_DELAY to an hour: batches leave full, as at full speed, instead of on the timer half-empty.

A request's figure is the loop's plus the export's a span times its sampled spans (1 for always_on; 0.1, keel's
default ratio, for (b)). What counting leaves out, which the time method keeps: the kernel's work (the same syscalls
in every configuration but the log's and the export's batched writes), cache misses and thread switches. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cpu_per_request import measuring, prepared
from inprocess import Callgrind, under_callgrind
from observability import PATHS, VARIANTS, Variant, cases, dropped_spans, sink, sink_stats
from polite_login import read_response
from run import (
    HOST,
    KEEL_TOKEN,
    WARMUP_S,
    BenchError,
    Case,
    check_limiter,
    free_port,
    git_commit,
    run_wrk,
    running,
    with_tokens,
    wrk_argv,
)

CONNECTIONS = 64  # as wrk's in bench/run.py
BATCH = 512  # OTEL_BSP_MAX_EXPORT_BATCH_SIZE's default
SHARE = {"b": 0.10, "a": 1.0}  # a request's sampled spans: keel's default ratio, always_on
START_UNDER_VALGRIND_S = 180.0


async def exactly(port: int, case: Case, requests: int, counting: Callable[[], object]) -> int:
    """Open CONNECTIONS keep-alive connections and have each answer once, call `counting()`, then send `requests`
    GETs of the case's path over them, each answered before the next on its connection; the count of non-2xx."""
    head = "".join(f"{h}\r\n" for h in case.headers)
    request = f"GET {case.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{head}\r\n".encode()
    failed = 0

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal failed
        writer.write(request)
        status, _ = await read_response(reader)
        failed += not 200 <= status < 300

    async def connection(count: int, pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        for _ in range(count):
            await one(*pair)

    pairs = [await asyncio.open_connection(HOST, port) for _ in range(CONNECTIONS)]
    try:
        await asyncio.gather(*(connection(1, pair) for pair in pairs))
        failed = 0
        counting()
        share, extra = divmod(requests, CONNECTIONS)
        await asyncio.gather(*(connection(share + (n < extra), pair) for n, pair in enumerate(pairs)))
    finally:
        for _, writer in pairs:
            writer.close()
    return failed


@dataclass(frozen=True, slots=True)
class Counted:
    """A case's instructions: the event loop's thread a request, and the export thread a span it sent."""

    loop: float
    export: float | None  # None: nothing exported (tracing off)

    def per_request(self, spans_per_request: float) -> float:
        return self.loop + (self.export or 0.0) * spans_per_request


def count_case(case: Case, logs: Path, requests: int, sink_port: int) -> Counted:
    """`case` counted over `requests` requests, started under callgrind (the sink at `sink_port`)."""
    out_dir = logs / f"callgrind-{case.id}"
    out_dir.mkdir()
    # a full batch only, ever (keel.span_queue): the batches a server at full speed sends, where valgrind's slower
    # one would otherwise see OTEL_BSP_SCHEDULE_DELAY pass with part of one waiting
    env = {**case.env, "OTEL_BSP_SCHEDULE_DELAY": str(3_600_000)}
    counted = replace(case, argv=tuple(under_callgrind(list(case.argv), str(out_dir))), env=env)
    port = free_port()
    with running(counted, port, logs / f"{case.id}.server.log", start_timeout=START_UNDER_VALGRIND_S) as proc:
        check_limiter(case, port)
        run_wrk(wrk_argv(case, port, WARMUP_S), WARMUP_S)
        callgrind = Callgrind(str(out_dir))
        callgrind.pid = str(proc.pid)  # taskset execs valgrind, which runs the server in its own process
        posts = 0

        def counting() -> None:
            nonlocal posts
            callgrind.control("--instr=on")
            callgrind.dump()
            posts = sink_stats(sink_port)[0]

        started = time.monotonic()
        failed = asyncio.run(exactly(port, case, requests, counting))
        total, loop = callgrind.dump()
        posts = sink_stats(sink_port)[0] - posts
        dropped = dropped_spans(port)
    if failed:
        raise BenchError(f"{case.id}: {failed} of {requests} requests answered non-2xx (log: {logs})")
    if dropped:
        raise BenchError(f"{case.id}: {dropped:.0f} spans dropped: the export thread fell behind (log: {logs})")
    # the other threads (the export thread, when tracing; a few hundred instructions in all otherwise)
    export = (total - loop) / (posts * BATCH) if posts else None
    result = Counted(loop / requests, export)
    shown = f", export {export:,.0f} a span ({posts} batches)" if export is not None else ""
    print(f"  {case.id:24} loop {result.loop:9,.0f} a request{shown} ({time.monotonic() - started:.0f} s)")
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/server_instructions.py", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10240)
    parser.add_argument(
        "--only", action="append", default=[], metavar="KEY", help="a configuration: baseline, log-off, c, b, a"
    )
    parser.add_argument("--baseline-rev", default="af44228", metavar="REV")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v.key in args.only]
    try:
        with measuring("instructions") as (workdir, logs, started):
            tokens, tree = prepared(workdir, logs, variants, args.baseline_rev)
            figures: dict[tuple[str, str], Counted] = {}
            with sink(logs) as sink_port:
                for v in variants:
                    for case in cases([v], workdir, tree, sink_port)[v.key]:
                        case = with_tokens(case, {KEEL_TOKEN: tokens.get(v.key, tokens[""])})
                        # the venv's python runs the `keel` script: valgrind wants the interpreter, not a #! file
                        case = replace(case, argv=(str(Path(case.argv[0]).parent / "python"), *case.argv))
                        figures[(v.key, case.path)] = count_case(case, logs, args.requests, sink_port)
            print(f"\n{started:%Y-%m-%d %H:%M} UTC, keel {git_commit()}, {args.requests} requests a case\n")
            print(table(variants, figures))
            return 0
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1


def table(variants: Sequence[Variant], figures: dict[tuple[str, str], Counted]) -> str:
    lines = [
        "| configuration | path | instructions a request | over the baseline | the loop's | the export's a span |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for path in PATHS:
        base = figures.get(("baseline", path))
        for v in variants:
            if (counted := figures.get((v.key, path))) is None:
                continue
            total = counted.per_request(SHARE.get(v.key, 0.0))
            over = ""
            if base is not None and v.key != "baseline":
                over = f"{total - base.loop:+,.0f} ({(total / base.loop - 1) * 100:+.1f} %)"
            export = f"{counted.export:,.0f}" if counted.export is not None else ""
            lines.append(f"| {v.label} | `{path}` | **{total:,.0f}** | {over} | {counted.loop:,.0f} | {export} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
