"""The Redis limiter against the in-process one, as server CPU time per request and as requests per second, paired.

`.venv/bin/python bench/limiter_cpu.py [--rounds 3] [--duration 8] [--before REV]`

Four configurations serve `GET /api/v1/public` (keyed by address) and `/api/v1/protected` (keyed by user) under a
policy that never trips: the limiter in-process and in Redis, each from this tree ("after") and from keel at
`--before` ("before", built in a worktree under bench/results/ like bench/observability.py's baseline). Each run is a
fresh `keel serve` on CPU 0 and wrk on CPU 1, measured as in bench/cpu_per_request.py (CPU of the server's process
tree from /proc around the measured run). Redis is a private redis-server on CPU 1, so its command counts are keel's
alone: the table also gives the limiter's script runs per request. The configurations' order rotates every round, and
each round pairs Redis with in-process of the same tree, so the ratios come from runs minutes apart at most. Prints a
markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from cpu_per_request import measure_counted, measuring, rotated
from observability import baseline_tree
from run import (
    CLIENT_CPU,
    HOST,
    KEEL_ENV,
    KEEL_SERVE,
    BenchError,
    Case,
    free_port,
    git_commit,
    keel_bench_token,
    migrate_keel,
)

PATHS = ("/api/v1/public", "/api/v1/protected")
BACKENDS = ("in-process", "Redis")


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the bench's own on the client CPU, no persistence; yields its URL."""
    port = free_port()
    argv = ["taskset", "-c", CLIENT_CPU, "redis-server", "--port", str(port), "--bind", HOST, "--save", ""]
    proc = subprocess.Popen(
        [*argv, "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"redis://{HOST}:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url, socket_timeout=1) as client:
                    client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise BenchError("the private redis-server did not answer within 10 s") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def script_runs(url: str) -> int:
    """EVALSHA and EVAL calls the Redis server has run so far (all of them keel's limiter: the server is ours)."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/limiter_cpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, metavar="S", help="seconds of each measured wrk run")
    parser.add_argument("--before", default="def2c58", metavar="REV", help="keel to compare with")
    return parser.parse_args(argv)


Figures = dict[tuple[str, str, str], list[tuple[float, float, float]]]  # (tree, backend, path) -> (µs, rps, runs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with measuring("limiter") as (workdir, logs, started):
            before, before_sha = baseline_tree(args.before)
            serves = {"after": KEEL_SERVE, "before": (str(before / ".venv" / "bin" / "keel"), *KEEL_SERVE[1:])}
            tokens = {}
            for tree, serve in serves.items():
                (workdir / tree).mkdir()
                migrate_keel(workdir / tree, Path(serve[0]).parent)
                tokens[tree] = keel_bench_token(workdir / tree, logs, serve, f"{tree}-setup")
            figures: Figures = {}
            configs = [(tree, backend) for tree in serves for backend in BACKENDS]
            with private_redis() as redis_url:
                for n in range(args.rounds):
                    for tree, backend in rotated(configs, n):
                        env = {**KEEL_ENV, "REDIS_URL": redis_url} if backend == "Redis" else KEEL_ENV
                        for path in PATHS:
                            headers = (f"Authorization: Bearer {tokens[tree]}",) if path.endswith("protected") else ()
                            name = f"{tree}-{backend}-{path.rsplit('/', 1)[-1]}"
                            case = Case(name, "keel", "uvicorn", path, serves[tree], workdir / tree, env, headers)
                            counter = (lambda: float(script_runs(redis_url))) if backend == "Redis" else (lambda: 0.0)
                            us, rps, per_request = measure_counted(case, logs, f"r{n + 1}", args.duration, counter)
                            figures.setdefault((tree, backend, path), []).append((us, rps, per_request))
                            print(f"  round {n + 1}/{args.rounds}  {case.id:28} {us:7.1f} µs/request  {rps:7.0f} rps")
            load = Path("/proc/loadavg").read_text().split()[:3]
            print(f"\n{started:%Y-%m-%d %H:%M} UTC, keel {git_commit()} against {before_sha[:7]}, ", end="")
            print(f"{args.rounds} round(s) of {args.duration} s, load average {' '.join(load)} at the end\n")
            print(table(figures))
            return 0
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1


def table(figures: Figures) -> str:
    lines = [
        "| keel | path | µs CPU/request in-process | in Redis | CPU ratio (in-process ÷ Redis) "
        "| rps ratio (Redis ÷ in-process, per round) | script runs per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for tree in ("before", "after"):
        for path in PATHS:
            local, remote = figures.get((tree, "in-process", path)), figures.get((tree, "Redis", path))
            if not local or not remote:
                continue
            local_us = statistics.median(us for us, _, _ in local)
            remote_us = statistics.median(us for us, _, _ in remote)
            rps_ratios = [r / lo for (_, lo, _), (_, r, _) in zip(local, remote, strict=True)]
            per_round = " / ".join(f"{ratio:.2f}" for ratio in rps_ratios)
            runs = statistics.median(runs for _, _, runs in remote)
            lines.append(
                f"| {tree} | `{path}` | {local_us:.1f} | {remote_us:.1f} | **{local_us / remote_us:.2f}** "
                f"| **{statistics.median(rps_ratios):.2f}** ({per_round}) | {runs:.3f} (1 per {1 / runs:.0f}) |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
