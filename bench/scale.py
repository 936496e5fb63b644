"""The scale-out scenarios of `make bench` (`--only scale`, issue 14): keel behind nginx, and fan-out across instances.

HTTP through nginx, in deploy/cluster.py's shape (Debian's nginx running deploy/nginx.conf, every keel on one
PostgreSQL and one Redis): `GET /api/v1/protected` and `POST /api/v1/channels/{id}/messages` (one channel per shape,
bench/publish.lua) with 1, 2 and 4 `keel serve` instances, with one instance of `--workers 2`, and with one instance
and no nginx (nginx's own share). Each shape gets a warm-up and a run per path, as run.py measures a case.

Unlike the other scenarios nothing is pinned: the instances, nginx, PostgreSQL, Redis and wrk share this machine's
two cores. That is the question asked (what does adding instances buy on one host) and also the limit of the answer:
it cannot show what instances on more hosts buy.

Cross-instance fan-out (bench/realtime.py's fan-out, unchanged): GOAL_N subscribers on instance B, the publisher on B
(the same instance) and then on A, alternating for --rounds rounds. Both paths go through Redis (keel's broker
delivers an instance's own messages through Redis too); the cross path adds A's handling of the publish. B is on CPU
0, A and this process on CPU 1: with both instances on CPU 0, A's work after its publish (the `published` reply,
metrics) ran while B fanned out and a first run measured that contention (1.69 x), not the crossing. A's few hundred
microseconds per publish come before the deliveries this process waits for. Goal: the cross-instance p99 ≤ 1.3 x
the same-instance p99 of the same run.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

import realtime
from run import (
    CLIENT_CPU,
    CONNECTIONS,
    DURATION_S,
    KEEL_BIN,
    KEEL_ENV,
    KEEL_SERVE,
    ROOT,
    TIMEOUT,
    WARMUP_S,
    BenchError,
    Case,
    Sample,
    flush_redis,
    free_port,
    keel_bench_token,
    met,
    parse_wrk,
    run_wrk,
    scrubbed_env,
)

sys.path.insert(0, str(ROOT))
from deploy.cluster import cluster

SCALE_ID = "scale"
DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/keel_bench_scale"  # --scale-database-url; recreated
REDIS_URL = "redis://127.0.0.1:6379/13"  # --scale-redis-url; flushed before each shape
PUBLISH_LUA = ROOT / "bench" / "publish.lua"
CROSS_GOAL = 1.3


@dataclass(frozen=True, slots=True)
class Shape:
    label: str
    instances: int
    workers: int = 1
    nginx: bool = True


SHAPES = (
    Shape("1 instance, no nginx", 1, nginx=False),
    Shape("1 instance", 1),
    Shape("2 instances", 2),
    Shape("4 instances", 4),
    Shape("1 instance, --workers 2", 1, workers=2),
)


@dataclass(frozen=True, slots=True)
class ShapeResult:
    shape: str
    protected: Sample
    publish: Sample
    last_seq: int  # the channel's last_seq after the publish runs: every 2xx counted by wrk is in it


@dataclass(frozen=True, slots=True)
class ScaleResult:
    shapes: tuple[ShapeResult, ...]
    same: tuple[realtime.FanOut, ...]  # publisher and subscribers on B
    cross: tuple[realtime.FanOut, ...]  # publisher on A, subscribers on B
    rounds: int

    @property
    def cross_ratio(self) -> float:
        return statistics.median(f.p99_median_ms for f in self.cross) / statistics.median(
            f.p99_median_ms for f in self.same
        )


def estimate_s(rounds: int) -> int:
    per_shape = 15 + 2 * (WARMUP_S + DURATION_S + 1)
    return math.ceil(len(SHAPES) * per_shape + rounds * 2 * (20 + realtime.GOAL_N / 200 + 10))


async def _recreate(url: str) -> None:
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    name = parts.path.lstrip("/")
    conn = await asyncpg.connect(parts._replace(path="/postgres").geturl(), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def prepare(database_url: str, redis_url: str) -> dict[str, str]:
    """An empty, migrated database and an empty Redis; the environment every instance of the scenario runs with."""
    try:
        asyncio.run(_recreate(database_url))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BenchError(f"PostgreSQL at {database_url}: {exc}") from None
    flush_redis(redis_url)
    env = {**KEEL_ENV, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    migrated = subprocess.run(
        [str(KEEL_BIN / "keel"), "migrate"], env=scrubbed_env(env), capture_output=True, text=True, check=False
    )
    if migrated.returncode != 0:
        raise BenchError(f"`keel migrate` on {database_url} failed: {migrated.stderr.strip()[-300:]}")
    return {**env, "KEEL_MAX_STREAMS_PER_USER": "100000"}  # every bench socket is the bench user's


def wrk(url: str, token: str, seconds: int, script: Path | None = None) -> Sample:
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", f"--timeout={TIMEOUT}"]
    argv += ["-H", f"Authorization: Bearer {token}"] + (["-s", str(script)] if script else [])
    return parse_wrk(run_wrk([*argv, url], seconds))


def measure_shape(shape: Shape, env: Mapping[str, str], token: str, logs: Path) -> ShapeResult:
    flush_redis(env["REDIS_URL"])  # the limiter's buckets and the cache start empty
    ports = [free_port() for _ in range(shape.instances)]
    serve = ("--workers", str(shape.workers)) if shape.workers > 1 else ()
    directory = logs / f"scale-{shape.instances}x{shape.workers}{'' if shape.nginx else '-direct'}"
    with cluster(
        directory,
        env=scrubbed_env(env),
        port=free_port(),
        keel_ports=ports,
        keel=(str(KEEL_BIN / "keel"),),
        serve=serve,
    ) as running:
        base = running.url if shape.nginx else running.instances[0]
        name = f"scale-{len(os.listdir(logs))}-{shape.instances}x{shape.workers}"
        status, body = realtime.api(urlsplit(base).port or 80, "POST", "/api/v1/channels", token, {"name": name})
        if status != 201:
            raise BenchError(f"{shape.label}: creating a channel answered {status}: {body[:200]!r}")
        channel = json.loads(body)["id"]
        protected = f"{base}/api/v1/protected"
        wrk(protected, token, WARMUP_S)
        protected_sample = wrk(protected, token, DURATION_S)
        messages = f"{base}/api/v1/channels/{channel}/messages"
        wrk(messages, token, WARMUP_S, PUBLISH_LUA)
        publish_sample = wrk(messages, token, DURATION_S, PUBLISH_LUA)
        status, body = realtime.api(urlsplit(base).port or 80, "GET", f"/api/v1/channels/{channel}", token)
        last_seq = int(json.loads(body)["last_seq"]) if status == 200 else -1
    return ShapeResult(shape.label, protected_sample, publish_sample, last_seq)


def fan_out_across(
    env: Mapping[str, str], token: str, workdir: Path, logs: Path, rounds: int
) -> tuple[list[realtime.FanOut], list[realtime.FanOut]]:
    realtime.raise_fd_limit(realtime.GOAL_N)
    a = Case("scale-fanout-a", "keel", "uvicorn", "/healthz", KEEL_SERVE, workdir, env)
    b = replace(a, id="scale-fanout-b")
    same: list[realtime.FanOut] = []
    cross: list[realtime.FanOut] = []
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    try:
        with (
            realtime.serving(a, token, logs / "scale-fanout-a.server.log", cpu=CLIENT_CPU) as on_a,
            realtime.serving(b, token, logs / "scale-fanout-b.server.log") as on_b,
        ):
            for i in range(rounds):
                for via, into in ((on_b, same), (on_a, cross)):
                    f = realtime.fan_out(on_b, realtime.GOAL_N, publisher=via)
                    into.append(f)
                    where = "same instance" if via is on_b else "across      "
                    print(
                        f"  scale  round {i + 1}/{rounds} fan-out N={f.n} {where}  p50 {f.p50_median_ms:6.1f} ms  "
                        f"p99 {f.p99_median_ms:6.1f} ms  complete {f.complete}/{len(f.p99_ms)}",
                        flush=True,
                    )
    finally:
        os.sched_setaffinity(0, affinity)
    return same, cross


def measure(
    workdir: Path, logs: Path, rounds: int, database_url: str = DATABASE_URL, redis_url: str = REDIS_URL
) -> ScaleResult:
    env = prepare(database_url, redis_url)
    token = keel_bench_token(workdir, logs, name="scale-setup", env=env)
    shapes = []
    for shape in SHAPES:
        r = measure_shape(shape, env, token, logs)
        shapes.append(r)
        print(
            f"  scale  {shape.label:26} protected {r.protected.rps:7.0f} rps p99 {r.protected.p99_ms:6.1f} ms  "
            f"publish {r.publish.rps:6.0f}/s p99 {r.publish.p99_ms:6.1f} ms",
            flush=True,
        )
    same, cross = fan_out_across(env, token, workdir, logs, rounds)
    return ScaleResult(tuple(shapes), tuple(same), tuple(cross), rounds)


def _errors(s: Sample) -> str:
    return ", ".join(p for p in (f"{s.non_2xx} non-2xx" if s.non_2xx else "", s.socket_errors) if p) or "none"


def report(result: ScaleResult) -> list[str]:
    method = (
        f"Scale-out (bench/scale.py): keel on PostgreSQL + Redis behind Debian's nginx (deploy/nginx.conf), nothing "
        f"pinned: instances, nginx, the databases and wrk (`-t1 -c{CONNECTIONS}`, {WARMUP_S} s warm-up, "
        f"{DURATION_S} s run) share the two cores. Publish: POST one message per request into one channel per shape."
    )
    lines = [
        "| shape | /api/v1/protected rps | p50 / p99 ms | publish msg/s | p50 / p99 ms | errors | last_seq |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in result.shapes:
        p, w = r.protected, r.publish
        errors = "; ".join(f"{what}: {_errors(s)}" for what, s in (("GET", p), ("POST", w)) if _errors(s) != "none")
        lines.append(
            f"| {r.shape} | {p.rps:.0f} | {p.p50_ms:.1f} / {p.p99_ms:.1f} | {w.rps:.0f} | "
            f"{w.p50_ms:.1f} / {w.p99_ms:.1f} | {errors or 'none'} | {r.last_seq} |"
        )
    same = statistics.median(f.p99_median_ms for f in result.same)
    cross = statistics.median(f.p99_median_ms for f in result.cross)
    fanout = (
        f"Cross-instance fan-out to {realtime.GOAL_N} WebSocket subscribers on instance B ({result.rounds} round(s), "
        f"median of per-publish p99s): publisher on B {same:.1f} ms, publisher on A {cross:.1f} ms: "
        f"{result.cross_ratio:.2f} x (goal ≤ {CROSS_GOAL} x: {met(result.cross_ratio <= CROSS_GOAL)})."
    )
    return [method, "\n".join(lines), fanout]
