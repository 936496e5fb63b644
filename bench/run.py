"""`make bench`: keel and its peers under wrk, measured the same way in one invocation.

Method (as ../shared/bench/BASELINE.md): every case gets a fresh server pinned to CPU 0, a 3 s wrk warm-up that is
thrown away, then `taskset -c 1 wrk -t1 -c64 -d10s --latency --timeout=2s URL`. Rounds run every case once, so keel
and the peers share the machine's drift; with several rounds each figure is the median per case. Results are printed
and appended to BENCHMARKS.md; raw wrk output and server logs go to bench/results/ (git-ignored).

To add a scenario, add a Case to `keel_cases` or `peer_cases`. A bearer token goes in `headers` as `{keel_token}`
(an access token of the bench user, created once after migrating) or `{peer_token}` (peers/make_token.py).

keel's standard rows run with the rate limiter on, in-process, under a policy that never trips (how users run keel,
minus the 429s). The limiter's cost is measured by extra keel-on-uvicorn cases of `GET /api/v1/public`: the same server
with `KEEL_RATE_LIMIT=off`, and with `REDIS_URL` (database 14 of a local Redis, flushed before each of its cases) on and
off. A limiter-on row names its off twin (`Case.limiter_off`); the table reports 1 - on/off per pair.

The login scenario (`--only login`) is separate and runs once: one keel server, login throughput through the Argon2
pool, then `GET /api/v1/public` p99 and the server's RSS while 200 clients flood the token endpoint (`login_scenario`):
first wrk's clients, which ignore Retry-After, then well-behaved ones that honour it (bench/polite_login.py).

The observability scenario (bench/observability.py, `--only observability`): keel at `--baseline-rev` (before
observability) against today's keel with the access log, metrics and tracing in three configurations, HTTP and the
WS fan-out, --rounds times, after everything else.

The realtime scenarios (bench/realtime.py: WebSocket fan-out and publish rate, memory per idle WebSocket and SSE stream,
keel against naive FastAPI) run after everything else, the fan-out --rounds times and the others once; `--only ws`,
`--only sse`, `--only fanout` or `--only realtime` select them.

The scale-out scenario (bench/scale.py, `--only scale`): keel on PostgreSQL + Redis behind nginx with 1, 2 and 4
instances and with `--workers 2`, then the WebSocket fan-out across two instances, last of all.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
SHARED_BENCH = ROOT.parent / "shared" / "bench"
KEEL_BIN = ROOT / ".venv" / "bin"
PEERS_VENV = ROOT / ".venv-peers"
PEERS_REQUIREMENTS = ROOT / "bench" / "peers-requirements.txt"
PEERS_STAMP = PEERS_VENV / ".bench-requirements.txt"  # the requirements the venv was last built from
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"
LOGIN_LUA = ROOT / "bench" / "login.lua"
POLITE_LOGIN = ROOT / "bench" / "polite_login.py"

HOST = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = "0", "1"
WARMUP_S, DURATION_S, CONNECTIONS, TIMEOUT = 3, 10, 64, "2s"
START_TIMEOUT_S, STOP_TIMEOUT_S = 30.0, 10.0

# A limit that never trips: the limiter's cost is measured, not its 429s (one client IP sends everything). The JWT
# secret is fixed so the bench user's token is valid on every fresh server, and the access token outlives a long run.
NEVER_TRIPS = "1000000000/s burst 1000000000"
KEEL_ENV = {
    "KEEL_LOG_LEVEL": "warning",
    "KEEL_RATE_LIMIT": NEVER_TRIPS,
    "KEEL_AUTH_RATE_LIMIT": NEVER_TRIPS,
    "KEEL_JWT_SECRET": "keel-bench-only-hs256-secret-0123456789abcdef",
    "KEEL_ACCESS_TOKEN_TTL": "24h",
}
KEEL_SERVE = (str(KEEL_BIN / "keel"), "serve", "--port", "{port}")
BENCH_USER = {"username": "bench_user", "email": "bench_user@example.com", "password": "bench-password-0123456789"}
FORM_TYPE = "application/x-www-form-urlencoded"
KEEL_TOKEN, PEER_TOKEN = "{keel_token}", "{peer_token}"  # placeholders in Case.headers, filled in by run()

# The limiter's cost: keel on uvicorn, GET /api/v1/public, limiter on (NEVER_TRIPS) against KEEL_RATE_LIMIT=off, without
# and with Redis. The goals are on 1 - on/off in rps. The database stays SQLite in the temporary directory either way.
LIMITER_OFF = {"KEEL_RATE_LIMIT": "off"}
REDIS_URL = "redis://127.0.0.1:6379/14"  # --redis-url; its database is flushed before every case that uses it
LIMITER_COST_GOAL = {"in-process": 0.10, "Redis": 0.25}

# The login scenario (see login_scenario)
LOGIN_ID = "login"
LOGIN_CONNECTIONS, PROBE_CONNECTIONS, FLOOD_CONNECTIONS = 16, 8, 200
FLOOD_S, PROBE_DELAY_S = 14, 2  # the public probe runs DURATION_S, starting PROBE_DELAY_S into the flood
LOGIN_TIMEOUT = "30s"  # far above the pool's 3 s max wait: a request stuck longer shows up as a wrk timeout
RSS_INTERVAL_S = 0.1
ARGON2_MIB = 19  # keel's Argon2id memory cost (src/keel/accounts/passwords.py: OWASP's minimum, 19456 KiB)
POOL_MAX_WAIT_S = 3.0  # keel's Argon2 pool: no caller waits longer for a slot; beyond that, 503 + Retry-After
RSS_ALLOWANCE_MIB = 16  # beyond workers x Argon2 memory: 200 connections' buffers and the waiters' objects
P99_FACTOR_GOAL = 3.0
MAX_LATENCY_GOAL_S = POOL_MAX_WAIT_S + 1.0  # the longest wait for a slot, plus the hash and the loop's own delay
# Inherited variables that would change what is measured; every case sets what it needs itself.
SCRUBBED_PREFIXES = ("KEEL_", "GRANIAN_", "UVICORN_", "OTEL_")
SCRUBBED_NAMES = {"DATABASE_URL", "REDIS_URL", "SLOWAPI", "HASH_IN_THREAD"}


class BenchError(Exception):
    """Something that stops the run; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Case:
    """One server and one URL. `argv` may contain `{port}`; `compare` names peer cases as (label, case id)."""

    id: str
    name: str
    server: str
    path: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    headers: tuple[str, ...] = ()
    compare: tuple[tuple[str, str], ...] = ()
    baseline: str = ""  # for a protected path: the case id of the same app's public path on the same server
    variant: str = ""  # shown after the name: what differs from the app's standard configuration
    limiter_off: str = ""  # for a rate-limited row: the case id of the same configuration with KEEL_RATE_LIMIT=off
    cost_goal: str = ""  # the LIMITER_COST_GOAL that limiter_off's cost is read against
    connections: int = CONNECTIONS  # wrk's

    @property
    def is_keel(self) -> bool:
        return self.name == "keel"

    @property
    def uses_redis(self) -> bool:
        return "REDIS_URL" in self.env

    @property
    def label(self) -> str:
        return f"{self.name}, {self.variant}" if self.variant else self.name


@dataclass(frozen=True, slots=True)
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: str
    statuses: dict[int, int] = field(default_factory=dict)  # only from bench/login.lua
    retry_after: int = 0  # 503 responses with a Retry-After header; only from bench/login.lua


@dataclass(frozen=True, slots=True)
class Result:
    case: Case
    samples: tuple[Sample, ...]

    @property
    def rps(self) -> float:
        return statistics.median(s.rps for s in self.samples)

    @property
    def p50_ms(self) -> float:
        return statistics.median(s.p50_ms for s in self.samples)

    @property
    def p99_ms(self) -> float:
        return statistics.median(s.p99_ms for s in self.samples)

    @property
    def problems(self) -> str:
        non_2xx = sum(s.non_2xx for s in self.samples)
        errors = "; ".join(s.socket_errors for s in self.samples if s.socket_errors)
        return ", ".join(part for part in (f"{non_2xx} non-2xx" if non_2xx else "", errors) if part)


# --- servers ---------------------------------------------------------------------------------------------------


def uvicorn_argv(venv: Path, app: str) -> tuple[str, ...]:
    options = f"--host {HOST} --port {{port}} --workers 1 --loop uvloop --http httptools --no-access-log"
    return (str(venv / "bin" / "uvicorn"), app, *options.split(), "--log-level", "warning")


def granian_argv(venv: Path, app: str, *extra: str) -> tuple[str, ...]:
    # Granian logs no access by default
    options = f"--interface asgi --loop uvloop --workers 1 --host {HOST} --port {{port}} --log-level warning"
    return (str(venv / "bin" / "granian"), *options.split(), *extra, app)


SERVERS = {"uvicorn": uvicorn_argv, "granian": granian_argv}


def case_id(prefix: str, server: str, path: str) -> str:
    """`keel-granian-public` for /api/v1/public: the prefix, the server and the path's last segment."""
    return "-".join(part for part in (prefix, server, path.rstrip("/").rsplit("/", 1)[-1]) if part)


def keel_cases(workdir: Path, redis_url: str = REDIS_URL) -> list[Case]:
    """keel as users run it (`keel serve`: uvicorn, uvloop, httptools) and under Granian for the comparison.

    Every standard keel row has the limiter on (in-process, NEVER_TRIPS). On uvicorn, `/api/v1/public` also runs with
    `KEEL_RATE_LIMIT=off`, and with Redis on and off: the limiter's cost, each on row against its off twin.
    """
    servers = {"uvicorn": KEEL_SERVE, "granian": granian_argv(ROOT / ".venv", "keel.asgi:app", "--factory")}
    public_path, protected_path = "/api/v1/public", "/api/v1/protected"
    cases = []
    for server, argv in servers.items():
        compare = (
            ("bare", case_id("bare", server, "/")),
            ("litestar", case_id("litestar", server, public_path)),
            ("fastapi", case_id("fastapi", "uvicorn", public_path)),
        )
        healthz, public = (
            Case(case_id("keel", server, path), "keel", server, path, argv, workdir, KEEL_ENV, (), compare)
            for path in ("/healthz", public_path)
        )
        protected = Case(
            case_id("keel", server, protected_path),
            "keel",
            server,
            protected_path,
            argv,
            workdir,
            KEEL_ENV,
            (f"Authorization: Bearer {KEEL_TOKEN}",),
            (
                ("litestar", case_id("litestar", server, protected_path)),
                ("fastapi", case_id("fastapi", "uvicorn", protected_path)),
            ),
            baseline=public.id,
        )
        if server != "uvicorn":
            cases += [healthz, public, protected]
            continue
        # the limiter's cost; each off twin runs just before its on row, one peer case apart at most
        off_env, redis_env = {**KEEL_ENV, **LIMITER_OFF}, {**KEEL_ENV, "REDIS_URL": redis_url}
        off = replace(public, id=f"{public.id}-limiter-off", env=off_env, compare=(), variant="limiter off")
        redis_off = replace(
            off, id=f"{public.id}-redis-limiter-off", env={**redis_env, **LIMITER_OFF}, variant="Redis, limiter off"
        )
        redis_on = replace(public, id=f"{public.id}-redis", env=redis_env, compare=(), variant="Redis")
        # the same token in a browser-session cookie: SPEC's goal is ≥ 0.95x the bearer row (the ratio column)
        cookie = replace(
            protected,
            id=f"{protected.id}-cookie",
            headers=(f"Cookie: keel_session={KEEL_TOKEN}",),
            compare=(("bearer", protected.id),),
            variant="session cookie",
        )
        cases += [
            healthz,
            off,
            replace(public, limiter_off=off.id, cost_goal="in-process"),
            protected,
            cookie,
            redis_off,
            replace(redis_on, limiter_off=redis_off.id, cost_goal="Redis"),
        ]
    return cases


def with_limiter_twins(selected: Sequence[Case], every: Sequence[Case]) -> list[Case]:
    """The selected cases plus the other half of any limiter on/off pair among them, in `every`'s order."""
    ids = {c.id for c in selected}
    ids |= {c.limiter_off for c in selected if c.limiter_off}
    ids |= {c.id for c in every if c.limiter_off in ids}
    return [c for c in every if c.id in ids]


def peer_cases(workdir: Path) -> list[Case]:
    """The peers of ../shared/bench/peers, started as its bench.py starts them."""

    def peer(prefix: str, name: str, server: str, module: str, path: str, env: Mapping[str, str] | None = None) -> Case:
        argv = SERVERS[server](PEERS_VENV, f"{module}:app")
        return Case(case_id(prefix, server, path), name, server, path, argv, SHARED_BENCH / "peers", env or {})

    def protected(public: Case) -> Case:
        """The same peer's /api/v1/protected with a token from peers/make_token.py (PyJWT on every request)."""
        path = "/api/v1/protected"
        return replace(
            public,
            id=case_id(public.id.split("-", 1)[0], public.server, path),
            path=path,
            headers=(f"Authorization: Bearer {PEER_TOKEN}",),
            baseline=public.id,
        )

    fastapi_env = {"DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'peers.db'}"}
    litestar_uvicorn = peer("litestar", "plain Litestar", "uvicorn", "litestar_app", "/api/v1/public")
    litestar_granian = peer("litestar", "plain Litestar", "granian", "litestar_app", "/api/v1/public")
    fastapi = peer("fastapi", "naive FastAPI", "uvicorn", "naive_fastapi", "/api/v1/public", fastapi_env)
    return [
        peer("bare", "bare ASGI", "uvicorn", "bare", "/"),
        peer("bare", "bare ASGI", "granian", "bare", "/"),
        litestar_uvicorn,
        protected(litestar_uvicorn),
        litestar_granian,
        protected(litestar_granian),
        fastapi,
        protected(fastapi),
    ]


def with_tokens(case: Case, tokens: Mapping[str, str]) -> Case:
    """The case with its token placeholders filled in."""
    if not case.headers:
        return case
    headers = []
    for header in case.headers:
        for placeholder, token in tokens.items():
            header = header.replace(placeholder, token)
        headers.append(header)
    return replace(case, headers=tuple(headers))


def interleave(keel: Sequence[Case], peers: Sequence[Case]) -> list[Case]:
    """Peers and keel alternate, grouped by server, so no side gets all the quiet minutes."""
    order: list[Case] = []
    for server in ("uvicorn", "granian"):
        mine = [c for c in peers if c.server == server], [c for c in keel if c.server == server]
        for i in range(max(map(len, mine))):
            order += [side[i] for side in mine if i < len(side)]
    return order + [c for c in (*peers, *keel) if c not in order]


def scrubbed_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED_NAMES}
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    case: Case, port: int, log: Path, cpu: str = SERVER_CPU, start_timeout: float = START_TIMEOUT_S
) -> Iterator[subprocess.Popen[bytes]]:
    """The case's server pinned to `cpu`, answering 2xx on its path within `start_timeout` s; its whole process
    group ends after."""
    argv = ["taskset", "-c", cpu, *(a.replace("{port}", str(port)) for a in case.argv)]
    with log.open("w") as err:
        err.write(" ".join(argv) + "\n\n")
        err.flush()
        proc = subprocess.Popen(
            argv,
            cwd=case.cwd,
            env=scrubbed_env(case.env),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_until_serving(case, port, proc, log, start_timeout)
        yield proc
    finally:
        stop(proc)


def wait_until_serving(
    case: Case, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise BenchError(f"{case.id}: server exited with {proc.returncode}: {tail} (log: {log})")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise BenchError(f"{case.id}: nothing accepted on port {port} within {timeout:.0f} s (log: {log})")
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", case.path, headers=dict(h.split(": ", 1) for h in case.headers))
        status = conn.getresponse().status
    finally:
        conn.close()
    if not 200 <= status < 300:
        raise BenchError(f"{case.id}: GET {case.path} answered {status}, not 2xx (log: {log})")


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; a worker it left behind (Granian) must not outlive it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


# --- wrk -------------------------------------------------------------------------------------------------------


def wrk_argv(case: Case, port: int, seconds: int) -> list[str]:
    return wrk_command(port, case.path, seconds, case.connections, TIMEOUT, case.headers)


def wrk_command(
    port: int,
    path: str,
    seconds: int,
    connections: int,
    timeout: str,
    headers: Sequence[str] = (),
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> list[str]:
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    argv.append(f"--timeout={timeout}")
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://{HOST}:{port}{path}")
    return [*argv, "--", *script_args] if script_args else argv


def run_wrk(argv: list[str], seconds: int) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise BenchError(f"unreadable wrk latency {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> Sample:
    def find(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise BenchError(f"wrk output has no match for {pattern!r}:\n{output}")
        return match.group(1)

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    statuses = re.search(r"^statuses:(.*)$", output, re.MULTILINE)  # printed by bench/login.lua
    counts = (pair.split("=") for pair in statuses.group(1).split()) if statuses else ()
    retry_after = re.search(r"^503 with Retry-After: (\d+)$", output, re.MULTILINE)  # bench/login.lua too
    return Sample(
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=to_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=to_ms(find(r"^\s+99%\s+(\S+)")),
        max_ms=to_ms(find(r"^[ \t]+Latency[ \t]+\S+[ \t]+\S+[ \t]+(\S+)")),
        requests=int(find(r"(\d+) requests in")),
        seconds=to_ms(find(r"\d+ requests in ([\d.]+(?:us|ms|s|m)),")) / 1000,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
        statuses={int(status): int(n) for status, n in counts},
        retry_after=int(retry_after.group(1)) if retry_after else 0,
    )


def measure(case: Case, logs: Path, label: str) -> Sample:
    if case.uses_redis:
        flush_redis(case.env["REDIS_URL"])  # every Redis case starts from an empty database, limiter state included
    port = free_port()
    with running(case, port, logs / f"{case.id}.{label}.server.log"):
        check_limiter(case, port)
        run_wrk(wrk_argv(case, port, WARMUP_S), WARMUP_S)
        argv = wrk_argv(case, port, DURATION_S)
        # counted mid-run: a bucket of the never-tripping policy lives a few ms after its last check, so on a
        # loaded machine a count after the run found none and failed the case
        counts: list[int | BenchError] = []
        midway = threading.Timer(DURATION_S / 2, lambda: counts.append(redis_buckets(case)))
        if case.uses_redis:
            midway.start()
        output = run_wrk(argv, DURATION_S)
        if case.uses_redis:
            midway.join()
            check_redis_buckets(case, counts[0] if counts else BenchError(f"{case.id}: the bucket count never ran"))
    (logs / f"{case.id}.{label}.wrk.txt").write_text(" ".join(argv) + "\n\n" + output)
    return parse_wrk(output)


def limiter_is_on(case: Case) -> bool:
    return case.is_keel and case.path.startswith("/api/") and case.env.get("KEEL_RATE_LIMIT", "off") != "off"


def check_limiter(case: Case, port: int) -> None:
    """A keel case under /api/ answers with RateLimit headers exactly when its limiter is on."""
    if not (case.is_keel and case.path.startswith("/api/")):
        return
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", case.path, headers=dict(h.split(": ", 1) for h in case.headers))
        response = conn.getresponse()
        response.read()
        limited = response.getheader("RateLimit") is not None
    finally:
        conn.close()
    if limited != limiter_is_on(case):
        state = "sends" if limited else "does not send"
        raise BenchError(f"{case.id}: GET {case.path} {state} RateLimit headers, against its KEEL_RATE_LIMIT")


def redis_buckets(case: Case) -> int | BenchError:
    """The limiter's buckets in the case's Redis now, or the error (returned, not raised: a timer thread runs it)."""
    try:
        with redis.Redis.from_url(case.env["REDIS_URL"], socket_timeout=5, socket_connect_timeout=2) as client:
            return sum(1 for _ in client.scan_iter(match="*rl:*", count=100))
    except redis.RedisError as exc:
        return BenchError(f"{case.id}: Redis at {case.env['REDIS_URL']}: {exc}")


def check_redis_buckets(case: Case, buckets: int | BenchError) -> None:
    """The limiter's buckets were in Redis during the run exactly when the limiter is on.

    keel's limiter fails open when Redis does not answer, so without this a Redis row could measure no Redis at all.
    """
    if isinstance(buckets, BenchError):
        raise buckets
    if bool(buckets) != limiter_is_on(case):
        raise BenchError(f"{case.id}: {buckets} rate-limit bucket(s) in Redis during the run, against KEEL_RATE_LIMIT")


# --- setup -----------------------------------------------------------------------------------------------------


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        raise BenchError("wrk is missing: install it with `sudo apt-get install -y wrk` and rerun")
    print("bench: installing wrk (apt-get install -y wrk)", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False)
        if subprocess.run(install, check=False).returncode != 0:
            raise BenchError("could not install wrk with apt-get; install the Debian package `wrk` and rerun")


def ensure_cpus() -> None:
    if not {0, 1} <= os.sched_getaffinity(0):
        raise BenchError("the harness needs CPUs 0 and 1 (server on one, wrk on the other)")


def ensure_peers_venv() -> None:
    """.venv-peers with the pinned peer stack, rebuilt only when bench/peers-requirements.txt changes."""
    wanted = PEERS_REQUIREMENTS.read_text()
    if PEERS_STAMP.is_file() and PEERS_STAMP.read_text() == wanted:
        return
    print(f"bench: installing the peer stack into {PEERS_VENV.name} (pinned in {PEERS_REQUIREMENTS.name})", flush=True)
    if not (PEERS_VENV / "bin" / "python").exists():
        python = shutil.which("python3") or sys.executable
        subprocess.run([python, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "-qq", "--disable-pip-version-check"]
    if subprocess.run([*pip, "-r", str(PEERS_REQUIREMENTS)], check=False).returncode != 0:
        raise BenchError(f"pip could not install {PEERS_REQUIREMENTS.relative_to(ROOT)} into {PEERS_VENV.name}")
    PEERS_STAMP.write_text(wanted)


def flush_redis(url: str) -> None:
    """Empty the Redis database of `url` (FLUSHDB: that database only); BenchError when Redis does not answer."""
    try:
        with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2) as client:
            client.flushdb()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {url}: {exc}") from None


def migrate_keel(workdir: Path, bin_dir: Path = KEEL_BIN) -> None:
    """keel's default DATABASE_URL is SQLite under ./var/, so the temporary working directory holds it."""
    keel = bin_dir / "keel"
    if not keel.exists():
        raise BenchError(f"{keel.relative_to(ROOT)} is missing: run `make setup` first")
    (workdir / "var").mkdir(exist_ok=True)
    done = subprocess.run(
        [str(keel), "migrate"], cwd=workdir, env=scrubbed_env(KEEL_ENV), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
        raise BenchError(f"`keel migrate` failed: {last[-1]}")


def http_request(port: int, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def login_form() -> str:
    """The bench user's OAuth2 password grant, url-encoded (what bench/login.lua posts)."""
    fields = {"grant_type": "password", "username": BENCH_USER["username"], "password": BENCH_USER["password"]}
    return urllib.parse.urlencode(fields)


def keel_bench_token(
    workdir: Path,
    logs: Path,
    serve: tuple[str, ...] = KEEL_SERVE,
    name: str = "keel-setup",
    env: Mapping[str, str] = KEEL_ENV,
) -> str:
    """Register the bench user on a short-lived keel server and log in once; return the access token.

    Every keel server of the run shares the database (the SQLite file, unless `env` names another) and
    KEEL_JWT_SECRET, so the token is valid on each of them.
    """
    setup = Case(name, "keel", "uvicorn", "/healthz", serve, workdir, env)
    port = free_port()
    with running(setup, port, logs / f"{name}.server.log"):
        status, body = http_request(port, "/api/v1/users", json.dumps(BENCH_USER).encode(), "application/json")
        if status != 201:
            raise BenchError(f"creating the bench user: POST /api/v1/users answered {status}: {body[:200]!r}")
        status, body = http_request(port, "/api/v1/auth/token", login_form().encode(), FORM_TYPE)
        if status != 200:
            raise BenchError(f"logging the bench user in: POST /api/v1/auth/token answered {status}: {body[:200]!r}")
    token: str = json.loads(body)["access_token"]
    return token


def peer_token() -> str:
    """A token the peers accept, as ../shared/bench/run_matrix.sh makes it."""
    argv = [str(PEERS_VENV / "bin" / "python"), str(SHARED_BENCH / "peers" / "make_token.py"), "alice"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"peers/make_token.py failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def argon2_hash_ms(clock: str = "perf_counter") -> float:
    """One Argon2id hash with keel's parameters on the idle server CPU (median of 20): the login cost per worker.

    `clock` names the `time` function that times it: wall clock by default; bench/login.py's ceiling takes
    `thread_time`, CPU time, since wall clock on a shared machine counts the other programs' turns on the core.
    """
    script = (
        "import statistics, time\n"
        "from argon2.low_level import Type, hash_secret_raw\n"
        "def once():\n"
        f"    t = time.{clock}()\n"
        f"    hash_secret_raw(b'password', b'0123456789abcdef', 2, {ARGON2_MIB * 1024}, 1, 32, Type.ID)\n"
        f"    return (time.{clock}() - t) * 1000\n"
        "once()\n"
        "print(statistics.median(once() for _ in range(20)))\n"
    )
    argv = ["taskset", "-c", SERVER_CPU, str(KEEL_BIN / "python"), "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"timing one Argon2 hash failed: {done.stderr.strip()}")
    return float(done.stdout)


# --- the login scenario ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginResult:
    workers: int  # the Argon2 pool's size: keel sizes it by the CPUs the server may run on
    hash_ms: float  # one hash on the idle server CPU
    throughput: Sample  # login alone, c=16
    idle: Sample  # GET /api/v1/public alone, c=8
    probe: Sample  # GET /api/v1/public during the flood, c=8
    flood: Sample  # login, c=200, wrk: every client re-sends at once, whatever Retry-After says
    polite_probe: Sample  # GET /api/v1/public during the well-behaved flood
    polite: Sample  # login, c=200, clients that wait Retry-After after a 503 (bench/polite_login.py)
    rss_start_mib: float  # the fresh server, before any login
    rss_before_mib: float  # just before the flood
    rss_peak_mib: float  # the highest sample during the flood
    rss_samples: int

    @property
    def ceiling(self) -> float:
        """Logins per second the pool can do at most: every worker hashing all the time on an idle core."""
        return self.workers * 1000 / self.hash_ms

    @property
    def p99_factor(self) -> float:
        return self.probe.p99_ms / self.idle.p99_ms

    @property
    def polite_p99_factor(self) -> float:
        return self.polite_probe.p99_ms / self.idle.p99_ms

    @property
    def rss_growth_mib(self) -> float:
        """Peak over the fresh server's RSS: whether malloc kept the throughput run's Argon2 buffer does not matter."""
        return self.rss_peak_mib - self.rss_start_mib

    @property
    def rss_bound_mib(self) -> float:
        return self.workers * ARGON2_MIB + RSS_ALLOWANCE_MIB


def tree_rss(proc: psutil.Process) -> int:
    """RSS in bytes of a process and all its descendants."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total


class RssSampler(threading.Thread):
    """Samples a process tree's RSS every RSS_INTERVAL_S until stopped."""

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.samples: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append(tree_rss(self.proc))
            if self._done.wait(RSS_INTERVAL_S):
                return

    def finish(self) -> list[int]:
        self._done.set()
        self.join()
        return self.samples


def login_scenario(workdir: Path, logs: Path) -> LoginResult:
    """One keel server (uvicorn on CPU 0): login throughput; then /api/v1/public p99 idle and during a login flood.

    The flood is wrk -c200 on the token endpoint for FLOOD_S; PROBE_DELAY_S in, a second wrk measures public c=8 for
    DURATION_S. Both wrk processes run on CPU 1, and the server's RSS (its process tree) is sampled meanwhile.
    """
    hash_ms = argon2_hash_ms()
    case = Case(LOGIN_ID, "keel", "uvicorn", "/api/v1/public", KEEL_SERVE, workdir, KEEL_ENV)
    port = free_port()
    token_path, script, form = "/api/v1/auth/token", LOGIN_LUA, (login_form(),)

    def login(seconds: int, connections: int) -> list[str]:
        return wrk_command(port, token_path, seconds, connections, LOGIN_TIMEOUT, script=script, script_args=form)

    def public(seconds: int) -> list[str]:
        return wrk_command(port, case.path, seconds, PROBE_CONNECTIONS, TIMEOUT)

    def keep(name: str, argv: list[str], output: str) -> Sample:
        (logs / f"login.{name}.wrk.txt").write_text(" ".join(argv) + "\n\n" + output)
        return parse_wrk(output)

    def flood_with_probe(flood_argv: list[str], probe_name: str) -> tuple[str, Sample]:
        """Run a flood for FLOOD_S and, PROBE_DELAY_S in, the public probe; the flood's output and the probe."""
        flood = subprocess.Popen(flood_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(PROBE_DELAY_S)
            probe_argv = public(DURATION_S)
            probe = keep(probe_name, probe_argv, run_wrk(probe_argv, DURATION_S))
            flood_out, flood_err = flood.communicate(timeout=FLOOD_S + 60)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        if flood.returncode != 0:
            raise BenchError(f"login flood {flood_argv[3]} failed ({flood.returncode}): {flood_err.strip()}")
        return flood_out, probe

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the RSS sampler must not take the server's CPU
    try:
        with running(case, port, logs / "login.server.log") as proc:
            server = psutil.Process(proc.pid)
            workers = len(server.cpu_affinity() or ())  # what keel's pool counts (sched_getaffinity)
            rss_start = tree_rss(server)
            run_wrk(login(WARMUP_S, LOGIN_CONNECTIONS), WARMUP_S)
            argv = login(DURATION_S, LOGIN_CONNECTIONS)
            throughput = keep("throughput", argv, run_wrk(argv, DURATION_S))
            run_wrk(public(WARMUP_S), WARMUP_S)
            argv = public(DURATION_S)
            idle = keep("public-idle", argv, run_wrk(argv, DURATION_S))
            time.sleep(1)  # let the loop settle after the idle run
            rss_before = tree_rss(server)
            sampler = RssSampler(server)
            sampler.start()
            flood_argv = login(FLOOD_S, FLOOD_CONNECTIONS)
            try:
                flood_out, probe = flood_with_probe(flood_argv, "public-during-flood")
            finally:
                samples = sampler.finish()
            flood_sample = keep("flood", flood_argv, flood_out)
            time.sleep(POOL_MAX_WAIT_S + 1)  # the queue the adversarial flood left has drained
            polite_argv = [
                *("taskset", "-c", CLIENT_CPU, str(KEEL_BIN / "python"), str(POLITE_LOGIN), str(port), token_path),
                *(form[0], str(FLOOD_CONNECTIONS), str(FLOOD_S)),
            ]
            polite_out, polite_probe = flood_with_probe(polite_argv, "public-during-polite-flood")
            (logs / "login.polite-flood.json").write_text(" ".join(polite_argv) + "\n\n" + polite_out)
            polite = json.loads(polite_out)
            polite_sample = Sample(**{**polite, "statuses": {int(k): n for k, n in polite["statuses"].items()}})
    finally:
        os.sched_setaffinity(0, affinity)
    mib = 1024 * 1024
    return LoginResult(
        workers=workers,
        hash_ms=hash_ms,
        throughput=throughput,
        idle=idle,
        probe=probe,
        flood=flood_sample,
        polite_probe=polite_probe,
        polite=polite_sample,
        rss_start_mib=rss_start / mib,
        rss_before_mib=rss_before / mib,
        rss_peak_mib=max(samples) / mib,
        rss_samples=len(samples),
    )


# --- report ----------------------------------------------------------------------------------------------------


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD") or "(none yet)"
    # appending results to BENCHMARKS.md does not change what is measured, so it does not make the tree dirty
    dirty = git("status", "--porcelain", "--", ".", ":(exclude)BENCHMARKS.md")
    if not dirty:
        return sha
    # say where: a harness-only difference (bench/) measures the commit's code, a src/ one does not
    files = [line[2:].strip() for line in dirty.splitlines()]  # "XY path"; git() stripped the first line's X
    paths = sorted({f.split("/", 1)[0] + "/" if "/" in f else f for f in files})
    shown = ", ".join(f"`{p}`" for p in paths[:5]) + (", …" if len(paths) > 5 else "")
    return f"{sha}+dirty ({shown})"


def venv_versions(python: Path, packages: Sequence[str]) -> str:
    script = (
        "import importlib.metadata as m, platform, sys\n"
        "print('Python ' + platform.python_version(), *(f'{p} {m.version(p)}' for p in sys.argv[1:]), sep=', ')"
    )
    if not python.exists():  # a run of keel's cases alone never builds the peers' venv
        return "not built"
    done = subprocess.run([str(python), "-c", script, *packages], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def machine_facts() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    ram = f"{int(meminfo.group(1)) / 1024**2:.1f} GiB" if meminfo else "unknown"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_version = re.search(r"wrk (\S+)", wrk.stdout + wrk.stderr)
    keel = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("uvicorn", "granian", "litestar"))
    peers = venv_versions(PEERS_VENV / "bin" / "python", ("uvicorn", "granian", "litestar", "fastapi"))
    return [
        f"CPU: {model.group(1).strip() if model else platform.processor() or 'unknown'}, {os.cpu_count()} cores, "
        f"RAM {ram}, kernel {platform.release()}, wrk {wrk_version.group(1) if wrk_version else 'unknown'}",
        f"keel venv: Python {platform.python_version()}, {keel}",
        f"peers venv: {peers}",
    ]


def ratios(result: Result, by_id: Mapping[str, Result]) -> str:
    parts = [f"{label} {result.rps / by_id[ref].rps:.2f}" for label, ref in result.case.compare if ref in by_id]
    return ", ".join(parts)


def versus_public(result: Result, by_id: Mapping[str, Result]) -> str:
    """A protected row against the same app's public row on the same server: rps ratio, then p99 ratio."""
    public = by_id.get(result.case.baseline)
    if public is None:
        return ""
    rps = f"{result.rps / public.rps:.2f}"
    text = f"rps **{rps}**" if result.case.is_keel else f"rps {rps}"
    return f"{text}, p99 {result.p99_ms / public.p99_ms:.2f}"


def percent(fraction: float, digits: int = 1) -> str:
    return f"{fraction * 100:.{digits}f} %"


def limiter_cost(result: Result, by_id: Mapping[str, Result]) -> str:
    """A limiter-on row against its KEEL_RATE_LIMIT=off twin: 1 - on/off in rps (medians, then per round), p99 ratio."""
    off = by_id.get(result.case.limiter_off)
    if off is None:
        return ""
    cost = 1 - result.rps / off.rps
    goal = LIMITER_COST_GOAL[result.case.cost_goal]
    verdict = "met" if cost <= goal else "**missed**"
    text = f"**{percent(cost)}** ({result.case.cost_goal}, goal ≤ {percent(goal, 0)}: {verdict})"
    if len(result.samples) > 1 and len(result.samples) == len(off.samples):
        rounds = " / ".join(
            f"{(1 - on.rps / of.rps) * 100:.1f}" for on, of in zip(result.samples, off.samples, strict=True)
        )
        text += f"; per round {rounds} %"
    return text + f"; p99 on/off {result.p99_ms / off.p99_ms:.2f}"


def table(results: Sequence[Result], rounds: int) -> str:
    by_id = {r.case.id: r for r in results}
    per_round = rounds > 1
    protected = any(r.case.baseline for r in results)
    limiter = any(r.case.limiter_off in by_id for r in results)
    head = [
        "case",
        "server",
        "path",
        "rps" + (" (median)" if per_round else ""),
        "p50 ms",
        "p99 ms",
        "ratio (rps vs peers)",
    ]
    if protected:
        head.append("protected ÷ public")
    if limiter:
        head.append("limiter cost (1 - on/off, rps)")
    if per_round:
        head.insert(4, "rps per round")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        name = f"**{r.case.name}**" if r.case.is_keel else r.case.name
        name += f", {r.case.variant}" if r.case.variant else ""
        rps = f"**{r.rps:.0f}**" if r.case.is_keel else f"{r.rps:.0f}"
        row = [name, r.case.server, f"`{r.case.path}`", rps, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", ratios(r, by_id)]
        if protected:
            row.append(versus_public(r, by_id))
        if limiter:
            row.append(limiter_cost(r, by_id))
        if per_round:
            row.insert(4, " / ".join(f"{s.rps:.0f}" for s in r.samples))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def method_line(results: Sequence[Result], rounds: int) -> str:
    rounds_text = f"{rounds} rounds, every case once per round, median per case" if rounds > 1 else "one round"
    text = (
        f"Method: each case a fresh server on CPU {SERVER_CPU} (`taskset -c {SERVER_CPU}`), a {WARMUP_S} s wrk "
        f"warm-up thrown away, then `taskset -c {CLIENT_CPU} wrk -t1 -c{CONNECTIONS} -d{DURATION_S}s --latency "
        f"--timeout={TIMEOUT}`; {rounds_text}; access logs off; keel on SQLite in a temporary directory with "
        f"`KEEL_LOG_LEVEL=warning`. Every keel row without a note has the rate limiter on, in-process, as users run "
        f"keel, under a policy that never trips (`KEEL_RATE_LIMIT` and `KEEL_AUTH_RATE_LIMIT` = `{NEVER_TRIPS}`): "
        "each request pays the check, none gets a 429. Ratios: keel rps / bare ASGI and plain Litestar on the same "
        "server, and / naive FastAPI on uvicorn (protected rows: / the peers' protected rows)."
    )
    ids = {r.case.id for r in results}
    if any(r.case.limiter_off in ids for r in results):
        redis_urls = sorted({r.case.env["REDIS_URL"] for r in results if r.case.uses_redis})
        redis_text = (
            f" Rows marked Redis set `REDIS_URL={', '.join(redis_urls)}` (the machine's Redis, not pinned; that "
            "database is flushed before each of these cases; keel's database stays SQLite), so the limiter runs one "
            "EVALSHA per event-loop tick."
            if redis_urls
            else ""
        )
        goals = ", ".join(f"≤ {percent(goal, 0)} {where}" for where, goal in LIMITER_COST_GOAL.items())
        text += (
            " Limiter cost: rows marked limiter off are the same server with `KEEL_RATE_LIMIT=off` (no limiter work on"
            f" `/api/v1/public`).{redis_text} The cost is 1 - on/off in rps from the medians of this run (then per "
            f"round, each pair from the same round; goals {goals}). wrk sends from one address, so every request "
            "shares one bucket."
        )
    if any(r.case.baseline for r in results):
        text += (
            " Protected rows send one `Authorization: Bearer` token for the whole run: keel's is an access token of a"
            " user created once after migrating (a fixed `KEEL_JWT_SECRET`, so every fresh server accepts it; keel"
            " caches the verified claims per token), the peers' comes from `peers/make_token.py` (PyJWT decodes it on"
            " every request). protected ÷ public: rps ratio (the goal for keel is ≥ 0.85) and p99 ratio (protected"
            " p99 / public p99, lower is better; the same goal reads ≤ 1.18), both from the medians of this run."
        )
    return text


def login_method_line(result: LoginResult) -> str:
    return (
        f"Login scenario (once): one keel server (`keel serve`, uvicorn) on CPU {SERVER_CPU}, every wrk on CPU "
        f"{CLIENT_CPU}. The bench user logs in with the OAuth2 password form (`bench/login.lua` posts it and counts "
        f"responses by status; `--timeout={LOGIN_TIMEOUT}`, so a request waiting that long would show as a wrk "
        f"timeout). Both rate-limit policies never trip (`{NEVER_TRIPS}`), so the flood meets Argon2's pool, not "
        f"the limiter. A {WARMUP_S} s warm-up each, then: login alone, c={LOGIN_CONNECTIONS}, {DURATION_S} s; "
        f"`GET /api/v1/public` alone, c={PROBE_CONNECTIONS}, {DURATION_S} s (idle); then a login flood, "
        f"c={FLOOD_CONNECTIONS}, {FLOOD_S} s, with `GET /api/v1/public` c={PROBE_CONNECTIONS} measured for {DURATION_S}"
        f" s from {PROBE_DELAY_S} s in; wrk's clients send again the moment an answer comes, 503 or not, as an "
        f"attacker would. Then, {POOL_MAX_WAIT_S + 1:.0f} s later, the same flood and probe with well-behaved clients "
        f"(`bench/polite_login.py`, one process on CPU {CLIENT_CPU}, keep-alive): after a 503 each waits its "
        f"Retry-After plus up to 20 % jitter. The server's RSS (process tree, psutil) is sampled every "
        f"{RSS_INTERVAL_S * 1000:.0f} ms during wrk's flood ({result.rss_samples} samples). The Argon2 pool has "
        f"{result.workers} worker(s): keel sizes it by the CPUs the process may run on, and the server is pinned to "
        f"one. One Argon2id hash (m={ARGON2_MIB} MiB, t=2, p=1) takes {result.hash_ms:.1f} ms on the idle CPU "
        f"{SERVER_CPU} (median of 20), so the pool's ceiling is {result.ceiling:.0f} logins/s."
    )


def statuses_text(sample: Sample) -> str:
    ok, busy = sample.statuses.get(200, 0), sample.statuses.get(503, 0)
    other = sum(n for status, n in sample.statuses.items() if status not in (200, 503))
    text = f"200: {ok}, 503: {busy}" + (f" ({sample.retry_after} with Retry-After)" if busy else "")
    text += f", other: {other}"
    return text + (f"; socket errors: {sample.socket_errors}" if sample.socket_errors else "")


def logins_per_s(sample: Sample) -> float:
    return sample.statuses.get(200, 0) / sample.seconds if sample.seconds else 0.0


def duration_text(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def probe_row(label: str, probe: Sample, factor: float) -> tuple[str, str, str, str]:
    return (
        f"{label}, c={PROBE_CONNECTIONS}, {DURATION_S} s",
        f"p99 **{probe.p99_ms:.2f} ms** (**{factor:.2f}x** idle), p50 {probe.p50_ms:.2f} ms, "
        f"{probe.rps:.0f} rps" + (f", {probe.non_2xx} non-2xx" if probe.non_2xx else ""),
        f"p99 ≤ {P99_FACTOR_GOAL:.0f}x idle",
        met(factor <= P99_FACTOR_GOAL and not probe.non_2xx),
    )


def flood_row(label: str, f: Sample, answered: bool) -> tuple[str, str, str, str]:
    return (
        label,
        f"{logins_per_s(f):.1f} logins/s, {f.rps:.0f} responses/s; {statuses_text(f)}; "
        f"latency p50 {duration_text(f.p50_ms)}, p99 {duration_text(f.p99_ms)}, **max {duration_text(f.max_ms)}**",
        f"503 + Retry-After beyond the queue; no wait unbounded: max ≤ {MAX_LATENCY_GOAL_S:.0f} s "
        f"({POOL_MAX_WAIT_S:.0f} s max wait + a hash + loop delay), no timeout",
        met(f.max_ms / 1000 <= MAX_LATENCY_GOAL_S and answered and f.retry_after == f.statuses.get(503, 0)),
    )


def login_table(r: LoginResult) -> str:
    t, f = r.throughput, r.flood
    timeouts = re.search(r"timeout (\d+)", f.socket_errors + " " + t.socket_errors)
    answered = not timeouts or int(timeouts.group(1)) == 0
    rows = [
        (
            f"login alone, c={LOGIN_CONNECTIONS}, {DURATION_S} s",
            f"**{logins_per_s(t):.1f} logins/s**, p50 {duration_text(t.p50_ms)}, p99 {duration_text(t.p99_ms)}, "
            f"max {duration_text(t.max_ms)}; {statuses_text(t)}",
            f"bounded by Argon2 by design: ≤ {r.ceiling:.0f}/s ({r.workers} x 1000 / {r.hash_ms:.1f} ms)",
            f"{logins_per_s(t) / r.ceiling:.2f} of the ceiling",
        ),
        (
            f"`GET /api/v1/public` alone, c={PROBE_CONNECTIONS}, {DURATION_S} s",
            f"p99 **{r.idle.p99_ms:.2f} ms**, p50 {r.idle.p50_ms:.2f} ms, {r.idle.rps:.0f} rps",
            "the reference",
            "",
        ),
        probe_row("`GET /api/v1/public` during the flood (wrk, Retry-After ignored)", r.probe, r.p99_factor),
        flood_row(f"login flood (wrk, Retry-After ignored), c={FLOOD_CONNECTIONS}, {FLOOD_S} s", f, answered),
        probe_row("`GET /api/v1/public` during the well-behaved flood", r.polite_probe, r.polite_p99_factor),
        flood_row(f"login flood (well-behaved: waits Retry-After), c={FLOOD_CONNECTIONS}, {FLOOD_S} s", r.polite, True),
        (
            "server RSS (process tree)",
            f"fresh {r.rss_start_mib:.1f} MiB, before the flood {r.rss_before_mib:.1f} MiB, peak during it "
            f"{r.rss_peak_mib:.1f} MiB: **{r.rss_growth_mib:+.1f} MiB** over fresh "
            f"({r.rss_peak_mib - r.rss_before_mib:+.1f} over before the flood)",
            f"peak over fresh ≤ {r.workers} worker(s) x {ARGON2_MIB} MiB + {RSS_ALLOWANCE_MIB} MiB "
            f"= {r.rss_bound_mib:.0f} MiB",
            met(r.rss_growth_mib <= r.rss_bound_mib),
        ),
    ]
    lines = ["| login scenario | result | target | met |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def section(
    results: Sequence[Result],
    login: LoginResult | None,
    rounds: int,
    started: datetime,
    remarks: Sequence[str] = (),
    commit_at_start: str = "",
    realtime_report: Sequence[str] = (),
) -> str:
    facts = "\n".join(f"- {fact}" for fact in machine_facts())
    notes = "\n".join(f"- {r.case.id}: {r.problems}" for r in results if r.problems)
    commit = git_commit()
    if commit_at_start and commit_at_start != commit:
        # every server imports the work tree when it starts, so a run that spans a commit measured both
        commit = f"{commit_at_start} at the start, {commit} at the end"
        remarks = [*remarks, "The work tree changed during the run: the cases measured the code of the moment."]
    parts = [f"## {started:%Y-%m-%d %H:%M} UTC — commit {commit}", facts]
    if results:
        parts += [method_line(results, rounds), table(results, rounds)]
    if notes:
        parts.append("Errors reported by wrk:\n" + notes)
    parts += remarks
    if login is not None:
        parts += [login_method_line(login), login_table(login)]
    parts += realtime_report
    return "\n\n".join(parts) + "\n"


def append_benchmarks(text: str) -> None:
    if not BENCHMARKS.exists():
        BENCHMARKS.write_text("# Benchmarks\n\nAppended by `make bench` (bench/run.py).\n")
    existing = BENCHMARKS.read_text()
    BENCHMARKS.write_text(existing.rstrip("\n") + "\n\n" + text)


# --- main ------------------------------------------------------------------------------------------------------


REALTIME_N = (1000, 5000)  # the WebSocket fan-out's subscriber counts; the realtime goals are read at 5 000
# warm-ups, runs, the two floods, server start
LOGIN_SECONDS = WARMUP_S + DURATION_S + WARMUP_S + DURATION_S + 1 + FLOOD_S + int(POOL_MAX_WAIT_S) + 1 + FLOOD_S + 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every case N times, interleaved (the WS fan-out too); report medians"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="run only cases whose id contains SUBSTRING (repeatable), e.g. keel, granian, protected, limiter, redis; "
        f"a limiter on/off pair always runs whole; `{LOGIN_ID}` selects the login scenario; `ws`, `sse` or `realtime` "
        "the realtime scenarios",
    )
    parser.add_argument(
        "--realtime-n",
        type=int,
        nargs="+",
        default=list(REALTIME_N),
        metavar="N",
        help="subscriber counts of the WebSocket fan-out (default 1000 5000); the largest is also the SSE stream count",
    )
    parser.add_argument(
        "--redis-url",
        default=REDIS_URL,
        metavar="URL",
        help=f"the Redis of the limiter's Redis cases (default {REDIS_URL}); its database is flushed before each",
    )
    parser.add_argument(
        "--baseline-rev",
        default="af44228",
        metavar="REV",
        help="the observability scenario's baseline: keel before observability (default af44228), built in a worktree "
        "under bench/results/",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table, do not append to BENCHMARKS.md")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if min(args.realtime_n) < 1:
        parser.error("--realtime-n must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import http_goals
    import login as login_cpu  # bench/login.py, where a login's CPU goes (`--only login-cpu`)
    import observability  # here, not at the top: bench/observability.py imports this module's helpers
    import publishing
    import realtime
    import scale

    args = parse_args(argv)
    if args.only == [publishing.PART]:  # its own servers and before/after pairing: see bench/publishing.py
        publishing.main([])
        return 0
    if not SHARED_BENCH.is_dir():
        print(f"bench: the peers folder {SHARED_BENCH} is missing (expected ../shared/bench beside the repo)")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    try:
        every = interleave(keel_cases(workdir, args.redis_url), peer_cases(workdir))
        if args.list:
            print("\n".join(f"{c.id:38} {c.label} on {c.server}, GET {c.path}" for c in every))
            print(
                f"{LOGIN_ID:38} keel on uvicorn: login throughput, then GET /api/v1/public p99 and RSS during a "
                "login flood (once, whatever --rounds)"
            )
            print("\n".join(f"{part:38} {text} (once)" for part, text in realtime.PARTS.items()))
            print(f"{observability.OBSERVABILITY_ID:38} keel before observability against access log, metrics, tracing")
            print(
                f"{publishing.PART:38} publishing into one channel, REST and WS, 100 subscribers (bench/publishing.py)"
            )
            print(
                f"{scale.SCALE_ID:38} keel behind nginx with 1, 2, 4 instances and --workers 2; cross-instance fan-out"
            )
            print(f"{http_goals.PART:38} issue 16 goal 1 with the full production stack, against the peers")
            return 0
        if args.only and login_cpu.LOGIN_CPU_ID in args.only:
            return login_cpu.main([])
        cases = [c for c in every if not args.only or any(s in c.id for s in args.only)]
        cases = with_limiter_twins(cases, every)  # a limiter cost needs both rows
        login = not args.only or any(s in LOGIN_ID for s in args.only)
        parts = [p for p in realtime.PARTS if not args.only or any(s in p for s in args.only)]
        observe = not args.only or any(s in observability.OBSERVABILITY_ID for s in args.only)
        scaled = not args.only or any(s in scale.SCALE_ID for s in args.only)
        goals = not args.only or any(s in http_goals.PART for s in args.only)
        if not cases and not login and not parts and not observe and not scaled and not goals:
            print(f"bench: no case id contains any of {args.only}; see --list")
            return 1
        return run(
            cases,
            login,
            args.rounds,
            workdir,
            write=not args.no_write,
            realtime_parts=parts,
            realtime_n=args.realtime_n,
            baseline_rev=args.baseline_rev if observe else "",
            scale_out=scaled,
            http_goals=goals,
        )
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(
    cases: Sequence[Case],
    login: bool,
    rounds: int,
    workdir: Path,
    *,
    write: bool,
    realtime_parts: Sequence[str] = (),
    realtime_n: Sequence[int] = (),
    baseline_rev: str = "",
    scale_out: bool = False,
    http_goals: bool = False,
) -> int:
    """The selected cases and scenarios; the observability scenario runs when `baseline_rev` is given."""
    import http_goals as goals_part  # see main()
    import observability
    import realtime
    import scale

    ensure_cpus()
    ensure_wrk()
    remarks = []
    redis_urls = sorted({c.env["REDIS_URL"] for c in cases if c.uses_redis})
    for url in redis_urls:
        try:
            flush_redis(url)
        except BenchError as exc:
            # a machine without Redis still gets every other figure; the section says what is missing
            skipped = [c.id for c in cases if c.uses_redis and c.env["REDIS_URL"] == url]
            cases = [c for c in cases if c.id not in skipped]
            remarks.append(f"Not measured, since {exc}: {', '.join(skipped)}.")
            print(f"bench: {remarks[-1]}", flush=True)
    if not cases and not login and not realtime_parts and not baseline_rev and not scale_out and not http_goals:
        raise BenchError("nothing left to measure")
    if realtime_parts or http_goals or any(not c.is_keel for c in cases):
        ensure_peers_venv()
    started, commit_at_start = datetime.now(UTC), git_commit()
    logs = RESULTS / f"{started:%Y%m%dT%H%M%SZ}"
    logs.mkdir(parents=True, exist_ok=True)
    tokens: dict[str, str] = {}
    if login or realtime_parts or baseline_rev or http_goals or any(c.is_keel for c in cases):
        migrate_keel(workdir)
        tokens[KEEL_TOKEN] = keel_bench_token(workdir, logs)
    if any(PEER_TOKEN in h for c in cases for h in c.headers):
        tokens[PEER_TOKEN] = peer_token()
    cases = [with_tokens(c, tokens) for c in cases]
    samples: dict[str, list[Sample]] = {c.id: [] for c in cases}
    seconds = len(cases) * rounds * (WARMUP_S + DURATION_S + 2) + (LOGIN_SECONDS if login else 0)
    seconds += realtime.estimate_s(realtime_parts, realtime_n, rounds) if realtime_parts else 0
    seconds += observability.estimate_s(rounds) if baseline_rev else 0
    seconds += scale.estimate_s(rounds) if scale_out else 0
    seconds += goals_part.estimate_s(rounds) if http_goals else 0
    what = f"{len(cases)} cases x {rounds} round(s)" + (" + the login scenario" if login else "")
    what += f" + {len(realtime_parts)} realtime scenario(s)" if realtime_parts else ""
    what += " + the observability scenario" if baseline_rev else ""
    what += " + the scale-out scenario" if scale_out else ""
    what += " + the full-stack HTTP goals" if http_goals else ""
    print(f"bench: {what}, about {math.ceil(seconds / 60)} min; logs in {logs}", flush=True)
    for n in range(rounds):
        for case in cases:
            sample = measure(case, logs, f"r{n + 1}")
            samples[case.id].append(sample)
            print(
                f"  round {n + 1}/{rounds}  {case.id:38} {sample.rps:9.0f} rps  p50 {sample.p50_ms:7.2f} ms  "
                f"p99 {sample.p99_ms:7.2f} ms",
                flush=True,
            )
    login_result = None
    if login:
        login_result = login_scenario(workdir, logs)
        print(
            f"  {LOGIN_ID}: {logins_per_s(login_result.throughput):.1f} logins/s alone; public p99 "
            f"{login_result.idle.p99_ms:.2f} ms idle, {login_result.probe.p99_ms:.2f} ms during wrk's flood, "
            f"{login_result.polite_probe.p99_ms:.2f} ms during the well-behaved one",
            flush=True,
        )
    realtime_result = None
    if realtime_parts:
        try:
            realtime_result = realtime.measure(realtime_parts, realtime_n, workdir, logs, tokens[KEEL_TOKEN], rounds)
        except BenchError as exc:
            if cases or login:  # the figures above are still worth writing
                remarks.append(f"Realtime scenarios not measured: {exc}")
                print(f"bench: {remarks[-1]}", flush=True)
            else:
                raise
    observed = None
    if baseline_rev:
        observed = observability.measure(workdir, logs, tokens[KEEL_TOKEN], rounds, baseline_rev)
    scaled = None
    if scale_out:
        try:
            scaled = scale.measure(workdir, logs, rounds)
        except BenchError as exc:  # PostgreSQL or nginx missing: every other figure is still worth writing
            remarks.append(f"Scale-out scenario not measured: {exc}")
            print(f"bench: {remarks[-1]}", flush=True)
    goals = None
    if http_goals:
        try:
            goals = goals_part.measure(workdir, logs, tokens[KEEL_TOKEN], rounds)
        except BenchError as exc:  # PostgreSQL missing: every other figure is still worth writing
            remarks.append(f"Full-stack HTTP goals not measured: {exc}")
            print(f"bench: {remarks[-1]}", flush=True)
    results = [Result(c, tuple(samples[c.id])) for c in cases]
    realtime_report = realtime.report(realtime_result) if realtime_result else []
    realtime_report += observability.report(observed) if observed else []
    realtime_report += scale.report(scaled) if scaled else []
    realtime_report += goals_part.report(goals) if goals else []
    report = section(results, login_result, rounds, started, remarks, commit_at_start, realtime_report)
    raw: dict[str, object] = {
        "cases": [{"case": r.case.id, "samples": [asdict(s) for s in r.samples]} for r in results],
        "login": asdict(login_result) if login_result else None,
        "realtime": asdict(realtime_result) if realtime_result else None,
        "observability": asdict(observed) if observed else None,
        "scale": asdict(scaled) if scaled else None,
        "http_goals": asdict(goals) if goals else None,
    }
    (logs / "results.json").write_text(json.dumps(raw, indent=2))
    print("\n" + report)
    if write:
        append_benchmarks(report)
        print(f"bench: appended to {BENCHMARKS.name}")
    return 0


if __name__ == "__main__":
    # under its module name, so that bench/realtime.py, which imports `run`, shares this module (BenchError above all)
    from run import main as run_main

    sys.exit(run_main())
