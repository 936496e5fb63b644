"""Where a login's CPU goes, on one core: the Argon2 thread against the event loop, per login (issue 16, goal 5).

`python bench/login.py [--rounds N] [--seconds S] [--baseline-rev REV]`, or `bench/run.py --only login-cpu`.

One keel server on CPU 0 (`keel serve`, so one Argon2 worker), wrk on CPU 1 posting the bench user's password form
at c=16 (bench/login.lua). Around each measured run the server's threads are read from /proc/<pid>/task/*/stat:
the main thread is the event loop, the threads at nice 10 are the Argon2 pool (keel.accounts.passwords lowers
their priority), the rest are aiosqlite's connection threads and the like. Per login that gives the loop's CPU, the
hash thread's CPU and the others'; the ceiling is what one core does alone: 1000 / the median of a tight loop of
hashes on CPU 0, timed in the same round. With `--baseline-rev`, keel at that revision (a worktree with its own venv)
runs in the same rounds, alternating with this tree, so both see the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from observability import baseline_tree
from run import (
    KEEL_ENV,
    KEEL_SERVE,
    LOGIN_LUA,
    BenchError,
    Case,
    argon2_hash_ms,
    free_port,
    keel_bench_token,
    login_form,
    migrate_keel,
    parse_wrk,
    run_wrk,
    running,
    wrk_command,
)

LOGIN_CPU_ID = "login-cpu"
CONNECTIONS, WARMUP_S = 16, 3
HASH_NICENESS = 10  # keel.accounts.passwords.HASH_THREAD_NICENESS: how the Argon2 threads are told apart


@dataclass(frozen=True)
class Threads:
    """CPU seconds so far of a process's event loop (its main thread), its Argon2 threads and the rest."""

    loop: float
    argon2: float
    other: float


def thread_cpu(pid: int) -> Threads:
    """schedstat's time on the CPU, in ns, not stat's utime + stime: those are whole clock ticks (10 ms) charged to
    whichever thread runs when the tick fires, too coarse for a few hundred logins."""
    loop = argon2 = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat, schedstat = (task / "stat").read_text(), (task / "schedstat").read_text()
        except FileNotFoundError:  # a thread that ended in between
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3.. of proc(5)
        seconds = int(schedstat.split()[0]) / 1e9
        if int(task.name) == pid:
            loop += seconds
        elif int(fields[16]) == HASH_NICENESS:
            argon2 += seconds
        else:
            other += seconds
    return Threads(loop, argon2, other)


@dataclass(frozen=True)
class Run:
    variant: str
    logins: int
    seconds: float
    hash_alone_ms: float  # one hash in a tight loop on CPU 0, CPU time, this round
    loop_us: float  # event-loop CPU per login
    argon2_ms: float  # Argon2 thread CPU per login
    other_us: float  # every other thread's CPU per login
    refused: int  # 503s

    @property
    def rate(self) -> float:
        return self.logins / self.seconds

    @property
    def ratio(self) -> float:
        """Logins/s against the one-core ceiling (1000 / hash_alone_ms)."""
        return self.rate * self.hash_alone_ms / 1000

    @property
    def cpu_ratio(self) -> float:
        """The share of the process's CPU per login that is the hash itself, at the speed it runs alone."""
        return self.hash_alone_ms / (self.argon2_ms + (self.loop_us + self.other_us) / 1000)


def measure(variant: str, serve: tuple[str, ...], workdir: Path, logs: Path, seconds: int) -> Run:
    """One fresh server: a warm-up, then `seconds` of logins at c=16 with the threads' CPU read around them."""
    for _ in range(2):
        try:
            return measure_once(variant, serve, workdir, logs, seconds)
        except BenchError as exc:
            if "address already in use" not in str(exc):  # another program took the free port first: again
                raise
    return measure_once(variant, serve, workdir, logs, seconds)


def measure_once(variant: str, serve: tuple[str, ...], workdir: Path, logs: Path, seconds: int) -> Run:
    case = Case(f"{LOGIN_CPU_ID}-{variant.split()[0]}", "keel", "uvicorn", "/api/v1/public", serve, workdir, KEEL_ENV)
    port = free_port()
    hash_ms = argon2_hash_ms(clock="thread_time")  # the ceiling's hash, in CPU time on CPU 0
    with running(case, port, logs / f"{case.id}.server.log") as proc:
        argv = wrk_command(
            port, "/api/v1/auth/token", WARMUP_S, CONNECTIONS, "30s", script=LOGIN_LUA, script_args=(login_form(),)
        )
        run_wrk(argv, WARMUP_S)
        argv[argv.index(f"-d{WARMUP_S}s")] = f"-d{seconds}s"
        before, start = thread_cpu(proc.pid), time.monotonic()
        output = run_wrk(argv, seconds)
        after, elapsed = thread_cpu(proc.pid), time.monotonic() - start
    sample = parse_wrk(output)
    logins = sample.statuses.get(200, 0)  # 503s (the pool's wait bound, on a loaded machine) cost CPU too
    if logins == 0 or set(sample.statuses) - {200, 503}:
        raise BenchError(f"{case.id}: expected 200s (and 503s), got {sample.statuses}")
    return Run(
        variant,
        logins,
        elapsed,
        hash_ms,
        (after.loop - before.loop) / logins * 1e6,
        (after.argon2 - before.argon2) / logins * 1e3,
        (after.other - before.other) / logins * 1e6,
        sample.statuses.get(503, 0),
    )


def report(runs: Sequence[Run]) -> str:
    lines = [
        "| variant | runs | logins/s | ÷ ceiling | hash alone ms | Argon2 thread ms/login | ÷ alone | loop µs/login "
        "| other threads µs/login | hash share of CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_variant: dict[str, list[Run]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    for variant, rs in by_variant.items():

        def med(values: Sequence[float]) -> float:
            return statistics.median(values)

        lines.append(
            f"| {variant} | {len(rs)} | {med([r.rate for r in rs]):.1f} | {med([r.ratio for r in rs]):.2f} "
            f"| {med([r.hash_alone_ms for r in rs]):.1f} | {med([r.argon2_ms for r in rs]):.1f} "
            f"| {med([r.argon2_ms / r.hash_alone_ms for r in rs]):.2f} | {med([r.loop_us for r in rs]):.0f} "
            f"| {med([r.other_us for r in rs]):.0f} | {med([r.cpu_ratio for r in rs]):.2f} |"
        )
    lines.append("")
    lines.append(
        "Each run (variant: logins in s; loop µs/login): "
        + "; ".join(f"{r.variant}: {r.logins} in {r.seconds:.1f} s, {r.loop_us:.0f}" for r in runs)
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--baseline-rev", default="", help="also run keel at this revision, alternating")
    args = parser.parse_args(argv)
    variants: dict[str, tuple[str, ...]] = {"this tree": KEEL_SERVE}
    workdir = Path(tempfile.mkdtemp(prefix="keel-login-cpu-"))
    logs = workdir / "logs"
    logs.mkdir()
    try:
        dirs: Mapping[str, Path] = {}
        if args.baseline_rev:
            tree, sha = baseline_tree(args.baseline_rev)
            variants = {f"baseline {sha[:7]}": (str(tree / ".venv" / "bin" / "keel"), *KEEL_SERVE[1:]), **variants}
        dirs = {name: workdir / f"v{i}" for i, name in enumerate(variants)}
        for name, serve in variants.items():
            dirs[name].mkdir()
            migrate_keel(dirs[name], Path(serve[0]).parent)
            keel_bench_token(dirs[name], logs, serve, f"setup-{dirs[name].name}")
        runs = []
        for i in range(args.rounds):
            order = list(variants.items()) if i % 2 == 0 else list(reversed(variants.items()))
            for name, serve in order:
                runs.append(measure(name, serve, dirs[name], logs, args.seconds))
                print(f"round {i + 1}: {runs[-1]}", file=sys.stderr)
        print(f"load average {os.getloadavg()[0]:.2f}, {os.getloadavg()[1]:.2f}, {os.getloadavg()[2]:.2f}")
        print(report(runs))
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
