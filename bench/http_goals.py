"""Issue 16 goal 1's HTTP sub-goals with the full production stack on (`bench/run.py --only http-goals`).

Every keel row here runs as a production deployment would: the access log at info, metrics, CORS configured (and an
`Origin` sent), responses compressible (`Accept-Encoding: gzip, br` sent), the limiter in-process (never tripping,
as everywhere in bench/), tracing configured with keel's default sampler (parent-based, 10 % of new traces) and
exporting to bench/otlp_sink.py on the client CPU. Each case is measured as bench/run.py measures one (a fresh
server on CPU 0, wrk on CPU 1, a warm-up, the run) and also as server CPU time per request (cpu_per_request.py's
reading, which a busy machine disturbs less than rps). The rows and their goals:

- `/api/v1/public` ≥ 0.9 x plain Litestar and ≥ 1.3 x naive FastAPI, on uvicorn; on Granian ≥ 0.9 x plain
  Litestar on Granian;
- `/api/v1/protected` with a bearer token and with the `keel_session` cookie ≥ 0.95 x keel's `/public`;
- `GET /api/v2/channels/{id}/messages` (first page of 50, served from the read cache) ≥ 0.6 x `/public`;
- `GET /api/v1/users/me` on PostgreSQL (database DATABASE_URL below, recreated) ≥ 4 000 rps at 8, 64 and 256
  connections;
- p99 ≤ 3 x p50 in every row.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import observability
import realtime
import scale
from cpu_per_request import measure_sample
from run import (
    CLIENT_CPU,
    DURATION_S,
    HOST,
    KEEL_ENV,
    KEEL_SERVE,
    KEEL_TOKEN,
    ROOT,
    WARMUP_S,
    BenchError,
    Case,
    Sample,
    free_port,
    granian_argv,
    keel_bench_token,
    met,
    peer_cases,
    running,
    with_tokens,
)

PART = "http-goals"
DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/keel_bench_http"  # recreated for the users/me rows
MESSAGES = 50
ME_CONNECTIONS = (8, 64, 256)
ME_GOAL_RPS = 4000
TAIL_GOAL = 3.0  # p99 ÷ p50
ORIGIN = "https://app.example"
BROWSER = (f"Origin: {ORIGIN}", "Accept-Encoding: gzip, br")
BEARER = f"Authorization: Bearer {KEEL_TOKEN}"
PG_TOKEN = "{pg_token}"  # noqa: S105 (a placeholder) the bench user's token on PostgreSQL
CHANNEL = "{channel}"  # a placeholder in a path, filled in once the channel exists


@dataclass(frozen=True, slots=True)
class Goal:
    row: str  # the case id measured
    against: str = ""  # a case id: the goal is on rps ÷ its rps (and its CPU per request ÷ the row's)
    ratio: float = 0.0
    rps: float = 0.0  # or on the row's own rps


@dataclass(frozen=True, slots=True)
class Figure:
    case: str
    label: str
    samples: tuple[Sample, ...]
    cpu_us: tuple[float, ...]

    @property
    def rps(self) -> float:
        return statistics.median(s.rps for s in self.samples)

    @property
    def us(self) -> float:
        return statistics.median(self.cpu_us)

    @property
    def tail(self) -> float:
        return statistics.median(s.p99_ms / s.p50_ms for s in self.samples)


@dataclass(frozen=True, slots=True)
class HttpGoals:
    figures: tuple[Figure, ...]
    goals: tuple[Goal, ...]
    rounds: int


def full_stack(sink_port: int) -> dict[str, str]:
    return {
        **KEEL_ENV,
        "KEEL_LOG_LEVEL": "info",
        "KEEL_CORS_ORIGINS": ORIGIN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }


def estimate_s(rounds: int) -> int:
    rows = 8 + len(ME_CONNECTIONS)
    return rounds * rows * (WARMUP_S + DURATION_S + 3) + 60


def cases(workdir: Path, sink_port: int, database_url: str) -> tuple[list[Case], list[Goal]]:
    """The rows (interleaved keel and peers) and the goals read off them."""
    env = full_stack(sink_port)
    granian = granian_argv(ROOT / ".venv", "keel.asgi:app", "--factory")

    def keel(key: str, path: str, *headers: str, argv: tuple[str, ...] = KEEL_SERVE, server: str = "uvicorn") -> Case:
        return Case(f"full-{server}-{key}", "keel", server, path, argv, workdir, env, (*BROWSER, *headers))

    peers = {c.id: c for c in peer_cases(workdir)}
    litestar, fastapi, litestar_granian = (
        peers[i] for i in ("litestar-uvicorn-public", "fastapi-uvicorn-public", "litestar-granian-public")
    )
    public = keel("public", "/api/v1/public")
    on_granian = keel("public", "/api/v1/public", argv=granian, server="granian")
    bearer = keel("protected", "/api/v1/protected", BEARER)
    cookie = replace(
        keel("protected-cookie", "/api/v1/protected", f"Cookie: keel_session={KEEL_TOKEN}"), variant="session cookie"
    )
    messages = keel("messages", f"/api/v2/channels/{CHANNEL}/messages?limit={MESSAGES}", BEARER)
    me = [
        replace(
            keel(f"users-me-pg-c{n}", "/api/v1/users/me", f"Authorization: Bearer {PG_TOKEN}"),
            env={**env, "DATABASE_URL": database_url},
            connections=n,
            variant=f"PostgreSQL, {n} connections",
        )
        for n in ME_CONNECTIONS
    ]
    goals = [
        Goal(public.id, litestar.id, 0.9),
        Goal(public.id, fastapi.id, 1.3),
        Goal(on_granian.id, litestar_granian.id, 0.9),
        Goal(bearer.id, public.id, 0.95),
        Goal(cookie.id, public.id, 0.95),
        Goal(messages.id, public.id, 0.6),
        *(Goal(c.id, rps=ME_GOAL_RPS) for c in me),
    ]
    return [litestar, public, fastapi, bearer, cookie, messages, litestar_granian, on_granian, *me], goals


def seed(workdir: Path, logs: Path, token: str) -> str:
    """A channel holding MESSAGES messages in the run's SQLite database, through a short-lived keel; its id."""
    case = Case("http-goals-seed", "keel", "uvicorn", "/healthz", KEEL_SERVE, workdir, KEEL_ENV)
    port = free_port()
    with running(case, port, logs / f"{case.id}.server.log", cpu=CLIENT_CPU):
        status, body = realtime.api(port, "POST", "/api/v1/channels", token, {"name": "http-goals"})
        if status != 201:
            raise BenchError(f"creating the channel: POST /api/v1/channels answered {status}: {body[:200]!r}")
        channel: str = json.loads(body)["id"]
        for n in range(MESSAGES):
            path = f"/api/v1/channels/{channel}/messages"
            status, body = realtime.api(port, "POST", path, token, {"body": f"message {n}"})
            if status != 201:
                raise BenchError(f"seeding the channel: POST {path} answered {status}: {body[:200]!r}")
    return channel


def measure(workdir: Path, logs: Path, token: str, rounds: int) -> HttpGoals:
    """Every row `rounds` times, in turn; run.py has migrated the SQLite database and made the bench user."""
    database_url = scale.prepare(DATABASE_URL, scale.REDIS_URL)["DATABASE_URL"]
    pg_env = {**KEEL_ENV, "DATABASE_URL": database_url}
    pg_token = keel_bench_token(workdir, logs, name="http-goals-pg-setup", env=pg_env)
    channel = seed(workdir, logs, token)
    with observability.sink(logs) as sink_port:
        every, goals = cases(workdir, sink_port, database_url)
        every = [with_tokens(c, {KEEL_TOKEN: token, PG_TOKEN: pg_token}) for c in every]
        every = [replace(c, path=c.path.replace(CHANNEL, channel)) for c in every]
        measured: dict[str, list[tuple[Sample, float]]] = {c.id: [] for c in every}
        for n in range(rounds):
            for case in every:
                sample, us, _ = measure_sample(case, logs, f"r{n + 1}", DURATION_S)
                measured[case.id].append((sample, us))
                print(
                    f"  round {n + 1}/{rounds}  {case.id:32} {sample.rps:8.0f} rps  {us:6.1f} µs/request  "
                    f"p50 {sample.p50_ms:6.2f}  p99 {sample.p99_ms:7.2f} ms",
                    flush=True,
                )
    figures = tuple(
        Figure(
            c.id,
            f"{c.label} on {c.server}, GET {c.path.split('?')[0].replace(channel, '{id}')}",
            tuple(s for s, _ in measured[c.id]),
            tuple(us for _, us in measured[c.id]),
        )
        for c in every
    )
    return HttpGoals(figures, tuple(goals), rounds)


def report(result: HttpGoals) -> list[str]:
    by_id = {f.case: f for f in result.figures}
    method = (
        "Issue 16 goal 1 with the full production stack (bench/http_goals.py): access log at info, metrics, CORS "
        "with an `Origin` sent, `Accept-Encoding: gzip, br` sent, the limiter in-process, tracing at the default "
        f"sampler exporting to a local sink; {result.rounds} round(s), medians; µs is the server's CPU time per "
        "request (cpu_per_request.py's reading: a busy machine disturbs it much less than rps)."
    )
    rows = ["| row | rps | µs CPU / request | p50 / p99 ms | p99 ÷ p50 ≤ 3 |", "| --- | ---: | ---: | ---: | ---: |"]
    for f in result.figures:
        p50 = statistics.median(s.p50_ms for s in f.samples)
        p99 = statistics.median(s.p99_ms for s in f.samples)
        tail = f"{f.tail:.2f} ({met(f.tail <= TAIL_GOAL)})"
        rows.append(f"| {f.label} | {f.rps:.0f} | {f.us:.1f} | {p50:.2f} / {p99:.2f} | {tail} |")
    lines = ["| goal | by rps | by CPU per request |", "| --- | ---: | ---: |"]
    for goal in result.goals:
        row = by_id[goal.row]
        if not goal.against:
            lines.append(f"| {row.label} ≥ {goal.rps:.0f} rps | {row.rps:.0f} ({met(row.rps >= goal.rps)}) | — |")
            continue
        other = by_id[goal.against]
        by_rps, by_cpu = row.rps / other.rps, other.us / row.us
        lines.append(
            f"| {row.label} ÷ {other.label} ≥ {goal.ratio} | {by_rps:.2f} ({met(by_rps >= goal.ratio)}) | "
            f"{by_cpu:.2f} ({met(by_cpu >= goal.ratio)}) |"
        )
    return [method, "\n".join(rows), "\n".join(lines)]
