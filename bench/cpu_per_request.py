"""The observability scenario's configurations measured as server CPU time per request, which a busy machine disturbs
much less than requests per second.

`.venv/bin/python bench/cpu_per_request.py [--rounds 3] [--duration 10] [--only c --only b] [--baseline-rev REV]
[--keel REV] [--interleave]`

Every configuration of bench/observability.py (the af44228 baseline, the access log off, (c), (b), (a)) serves
`GET /api/v1/public` and `/api/v1/protected` as there: a fresh `keel serve` on CPU 0, wrk on CPU 1, a 3 s warm-up, the
OTLP sink on CPU 1 for (b) and (a). Around the measured wrk run the harness reads the CPU time (user + system) of the
server's process tree from /proc; the figure is that time divided by the requests wrk completed, in µs, a median over
the rounds. It counts everything the server spends for those requests, the batch processor's export thread
included, and nothing wrk or the sink spend. The order of the configurations rotates every round, as there. The
paired column is the median over rounds of each run's figure divided by the baseline's of the same round.
`--interleave` starts every server once instead (all on CPU 0, each idle but in its turn), warms each up, and then
runs `--rounds` cycles of one `--duration` run per server, rotating: on a host whose speed drifts by tens of percent
over minutes (2026-12-04), short runs seconds apart see the same drift, which the paired column cancels.
`--keel REV` serves today's configurations from keel at REV (built like the baseline, in a worktree under
bench/results/), for a before/after pair. Prints a markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import psutil

from observability import PATHS, VARIANTS, Variant, baseline_tree, cases, sink, source_of
from run import (
    KEEL_SERVE,
    KEEL_TOKEN,
    RESULTS,
    WARMUP_S,
    BenchError,
    Case,
    Sample,
    check_limiter,
    ensure_cpus,
    ensure_wrk,
    free_port,
    git_commit,
    keel_bench_token,
    migrate_keel,
    parse_wrk,
    run_wrk,
    running,
    with_tokens,
    wrk_argv,
)

T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants so far (uvicorn's workers, if any)."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


@contextlib.contextmanager
def measuring(name: str) -> Iterator[tuple[Path, Path, datetime]]:
    """A CPU-per-request run's set-up, shared with bench/limiter_cpu.py: wrk and the CPU split checked, a scratch
    directory (removed afterwards) and a log folder RESULTS/<name>-<time>; yields (scratch, logs, started)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"keel-{name}-"))
    try:
        ensure_cpus()
        ensure_wrk()
        started = datetime.now(UTC)
        logs = RESULTS / f"{name}-{started:%Y%m%dT%H%M%SZ}"
        logs.mkdir(parents=True, exist_ok=True)
        yield workdir, logs, started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rotated(configurations: Sequence[T], round_index: int) -> tuple[T, ...]:
    """The configurations in round `round_index`'s order: each round starts one further, so none always goes first."""
    turn = round_index % len(configurations)
    return (*configurations[turn:], *configurations[:turn])


def measure_case(case: Case, logs: Path, label: str, seconds: int) -> tuple[float, float]:
    """(µs of server CPU per request, rps) of one case: a fresh server, a warm-up, then the measured run."""
    us, rps, _ = measure_counted(case, logs, label, seconds, lambda: 0.0)
    return us, rps


def measure_counted(
    case: Case, logs: Path, label: str, seconds: int, counter: Callable[[], float]
) -> tuple[float, float, float]:
    """`measure_case`, plus how much `counter` (read around the measured run) grew per request."""
    sample, us, counted = measure_sample(case, logs, label, seconds, counter)
    return us, sample.rps, counted


def measure_sample(
    case: Case, logs: Path, label: str, seconds: int, counter: Callable[[], float] = lambda: 0.0
) -> tuple[Sample, float, float]:
    """wrk's reading of the measured run, µs of server CPU per request, and `counter`'s growth per request."""
    with warmed_up(case, logs, label) as (port, pid):
        return measure_run(case, port, pid, logs, label, seconds, counter)


@contextlib.contextmanager
def warmed_up(case: Case, logs: Path, label: str) -> Iterator[tuple[int, int]]:
    """The case's server started, its limiter checked and a warm-up run done; yields (port, pid)."""
    port = free_port()
    with running(case, port, logs / f"{case.id}.{label}.server.log") as proc:
        check_limiter(case, port)
        run_wrk(wrk_argv(case, port, WARMUP_S), WARMUP_S)
        yield port, proc.pid


def measure_run(
    case: Case, port: int, pid: int, logs: Path, label: str, seconds: int, counter: Callable[[], float] = lambda: 0.0
) -> tuple[Sample, float, float]:
    """`measure_sample`'s measured run, on a server already started and warmed up."""
    before, counted = cpu_seconds(pid), counter()
    output = run_wrk(wrk_argv(case, port, seconds), seconds)
    after, counted = cpu_seconds(pid), counter() - counted
    (logs / f"{case.id}.{label}.wrk.txt").write_text(output)
    sample = parse_wrk(output)
    if sample.non_2xx:
        raise BenchError(f"{case.id}: {sample.non_2xx} non-2xx responses (log: {logs})")
    if sample.socket_errors:  # a timeout on a busy machine: the figure still holds, per request
        print(f"  {case.id}: socket errors: {sample.socket_errors}")
    return sample, (after - before) / sample.requests * 1e6, counted / sample.requests


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/cpu_per_request.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, metavar="S", help="seconds of each measured wrk run")
    parser.add_argument(
        "--only", action="append", default=[], metavar="KEY", help="a configuration: baseline, log-off, c, b, a"
    )
    parser.add_argument("--baseline-rev", default="af44228", metavar="REV")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="start every server once and alternate short runs among them (--rounds cycles of --duration s)",
    )
    parser.add_argument("--keel", metavar="REV", help="serve today's configurations from keel at REV, not this tree")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v.key in args.only]
    try:
        with measuring("cpu") as (workdir, logs, started):
            tokens, tree = prepared(workdir, logs, variants, args.baseline_rev)
            figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
            serve = KEEL_SERVE
            if args.keel:
                other, _ = baseline_tree(args.keel)
                serve = (str(other / ".venv" / "bin" / "keel"), *KEEL_SERVE[1:])
            with sink(logs) as sink_port:
                by_variant = {
                    key: [
                        replace(c, argv=serve, env={**c.env, "PYTHONPATH": str(source_of(serve[0]))})
                        if key != "baseline"
                        else c
                        for c in variant_cases
                    ]
                    for key, variant_cases in cases(variants, workdir, tree, sink_port).items()
                }
                keyed = [
                    (v.key, with_tokens(c, {KEEL_TOKEN: tokens.get(v.key, tokens[""])}))
                    for v in variants
                    for c in by_variant[v.key]
                ]
                if args.interleave:
                    figures = interleaved(keyed, logs, args.rounds, args.duration)
                else:
                    for n in range(args.rounds):
                        for key, case in rotated(keyed, n):
                            us, rps = measure_case(case, logs, f"r{n + 1}", args.duration)
                            figures.setdefault((key, case.path), []).append((us, rps))
                            print(f"  round {n + 1}/{args.rounds}  {case.id:24} {us:7.1f} µs/request  {rps:7.0f} rps")
            commit = args.keel or git_commit()
            mode = "interleaved on running servers" if args.interleave else "a fresh server per run"
            print(
                f"\n{started:%Y-%m-%d %H:%M} UTC, keel {commit}, {args.rounds} round(s) of {args.duration} s, {mode}\n"
            )
            print(table(variants, figures))
            return 0
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1


def prepared(workdir: Path, logs: Path, variants: Sequence[Variant], baseline_rev: str) -> tuple[dict[str, str], Path]:
    """Today's keel migrated in `workdir` and, when a variant is the baseline, `baseline_rev`'s in a worktree (its
    database in workdir/baseline); each one's bench token (by variant key: "" for today's) and the worktree."""
    migrate_keel(workdir)
    tokens = {"": keel_bench_token(workdir, logs)}
    tree = Path()
    if any(v.key == "baseline" for v in variants):
        tree, _ = baseline_tree(baseline_rev)
        (workdir / "baseline").mkdir()
        migrate_keel(workdir / "baseline", tree / ".venv" / "bin")
        serve = (str(tree / ".venv" / "bin" / "keel"), *KEEL_SERVE[1:])
        tokens["baseline"] = keel_bench_token(workdir / "baseline", logs, serve, "baseline-setup")
    return tokens, tree


def interleaved(
    keyed: Sequence[tuple[str, Case]], logs: Path, cycles: int, seconds: int
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Every case's server started at once (all on CPU 0, idle but for their turn) and warmed up, then `cycles`
    cycles of one measured run each, in an order that rotates every cycle: a baseline and its configurations are
    measured seconds apart, so a host whose speed drifts over minutes moves them together."""
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with contextlib.ExitStack() as stack:
        started = [(key, case, *stack.enter_context(warmed_up(case, logs, "interleaved"))) for key, case in keyed]
        for n in range(cycles):
            for key, case, port, pid in rotated(started, n):
                sample, us, _ = measure_run(case, port, pid, logs, f"c{n + 1}", seconds)
                figures.setdefault((key, case.path), []).append((us, sample.rps))
                print(f"  cycle {n + 1}/{cycles}  {case.id:24} {us:7.1f} µs/request  {sample.rps:7.0f} rps")
    return figures


def table(variants: Sequence[Variant], figures: dict[tuple[str, str], list[tuple[float, float]]]) -> str:
    lines = [
        "| configuration | path | µs CPU per request (median) | per round | + µs over baseline | paired: median of"
        " ÷ baseline's in the same round | rps (noisy) |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for path in PATHS:
        base = figures.get(("baseline", path))
        base_us = statistics.median(us for us, _ in base) if base else None
        for v in variants:
            rounds = figures.get((v.key, path))
            if not rounds:
                continue
            us = statistics.median(u for u, _ in rounds)
            extra = (
                f"{us - base_us:+.1f} ({(us / base_us - 1) * 100:+.0f} %)" if base_us and v.key != "baseline" else ""
            )
            paired = (
                f"{(statistics.median(u / b for (u, _), (b, _) in zip(rounds, base, strict=True)) - 1) * 100:+.0f} %"
                if base and v.key != "baseline"
                else ""
            )
            per_round = " / ".join(f"{u:.1f}" for u, _ in rounds)
            rps = statistics.median(r for _, r in rounds)
            lines.append(f"| {v.label} | `{path}` | **{us:.1f}** | {per_round} | {extra} | {paired} | {rps:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
