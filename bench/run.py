"""`make bench`: keel and its peers under wrk, measured the same way in one invocation.

Method (as ../shared/bench/BASELINE.md): every case gets a fresh server pinned to CPU 0, a 3 s wrk warm-up that is
thrown away, then `taskset -c 1 wrk -t1 -c64 -d10s --latency --timeout=2s URL`. Rounds run every case once, so keel
and the peers share the machine's drift; with several rounds each figure is the median per case. Results are printed
and appended to BENCHMARKS.md; raw wrk output and server logs go to bench/results/ (git-ignored).

To add a scenario, add a Case to `keel_cases` or `peer_cases` (a bearer token goes in `headers`).
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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_BENCH = ROOT.parent / "shared" / "bench"
KEEL_BIN = ROOT / ".venv" / "bin"
PEERS_VENV = ROOT / ".venv-peers"
PEERS_REQUIREMENTS = ROOT / "bench" / "peers-requirements.txt"
PEERS_STAMP = PEERS_VENV / ".bench-requirements.txt"  # the requirements the venv was last built from
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"

HOST = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = "0", "1"
WARMUP_S, DURATION_S, CONNECTIONS, TIMEOUT = 3, 10, 64, "2s"
START_TIMEOUT_S, STOP_TIMEOUT_S = 30.0, 10.0

# A limit that never trips: the limiter's cost is measured, not its 429s (one client IP sends everything).
KEEL_ENV = {"KEEL_LOG_LEVEL": "warning", "KEEL_RATE_LIMIT": "1000000000/s burst 1000000000"}
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

    @property
    def is_keel(self) -> bool:
        return self.name == "keel"


@dataclass(frozen=True, slots=True)
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str


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


def keel_cases(workdir: Path) -> list[Case]:
    """keel as users run it (`keel serve`: uvicorn, uvloop, httptools) and under Granian for the comparison."""
    servers = {
        "uvicorn": (str(KEEL_BIN / "keel"), "serve", "--port", "{port}"),
        "granian": granian_argv(ROOT / ".venv", "keel.asgi:app", "--factory"),
    }
    cases = []
    for server, argv in servers.items():
        compare = (
            ("bare", case_id("bare", server, "/")),
            ("litestar", case_id("litestar", server, "/api/v1/public")),
            ("fastapi", case_id("fastapi", "uvicorn", "/api/v1/public")),
        )
        for path in ("/healthz", "/api/v1/public"):
            cases.append(
                Case(case_id("keel", server, path), "keel", server, path, argv, workdir, KEEL_ENV, (), compare)
            )
    return cases


def peer_cases(workdir: Path) -> list[Case]:
    """The peers of ../shared/bench/peers, started as its bench.py starts them."""

    def peer(prefix: str, name: str, server: str, module: str, path: str, env: Mapping[str, str] | None = None) -> Case:
        argv = SERVERS[server](PEERS_VENV, f"{module}:app")
        return Case(case_id(prefix, server, path), name, server, path, argv, SHARED_BENCH / "peers", env or {})

    fastapi_env = {"DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'peers.db'}"}
    return [
        peer("bare", "bare ASGI", "uvicorn", "bare", "/"),
        peer("bare", "bare ASGI", "granian", "bare", "/"),
        peer("litestar", "plain Litestar", "uvicorn", "litestar_app", "/api/v1/public"),
        peer("litestar", "plain Litestar", "granian", "litestar_app", "/api/v1/public"),
        peer("fastapi", "naive FastAPI", "uvicorn", "naive_fastapi", "/api/v1/public", fastapi_env),
    ]


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
def running(case: Case, port: int, log: Path) -> Iterator[None]:
    """The case's server pinned to the server CPU, answering 2xx on its path; its whole process group ends after."""
    argv = ["taskset", "-c", SERVER_CPU, *(a.replace("{port}", str(port)) for a in case.argv)]
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
        wait_until_serving(case, port, proc, log)
        yield
    finally:
        stop(proc)


def wait_until_serving(case: Case, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
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
        raise BenchError(f"{case.id}: nothing accepted on port {port} within {START_TIMEOUT_S:.0f} s (log: {log})")
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
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        f"--timeout={TIMEOUT}",
    ]
    for header in case.headers:
        argv += ["-H", header]
    return [*argv, f"http://{HOST}:{port}{case.path}"]


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
    return Sample(
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=to_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=to_ms(find(r"^\s+99%\s+(\S+)")),
        requests=int(find(r"(\d+) requests in")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


def measure(case: Case, logs: Path, label: str) -> Sample:
    port = free_port()
    with running(case, port, logs / f"{case.id}.{label}.server.log"):
        run_wrk(wrk_argv(case, port, WARMUP_S), WARMUP_S)
        argv = wrk_argv(case, port, DURATION_S)
        output = run_wrk(argv, DURATION_S)
    (logs / f"{case.id}.{label}.wrk.txt").write_text(" ".join(argv) + "\n\n" + output)
    return parse_wrk(output)


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


def migrate_keel(workdir: Path) -> None:
    """keel's default DATABASE_URL is SQLite under ./var/, so the temporary working directory holds it."""
    keel = KEEL_BIN / "keel"
    if not keel.exists():
        raise BenchError(f"{keel.relative_to(ROOT)} is missing: run `make setup` first")
    (workdir / "var").mkdir(exist_ok=True)
    done = subprocess.run(
        [str(keel), "migrate"], cwd=workdir, env=scrubbed_env(KEEL_ENV), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
        raise BenchError(f"`keel migrate` failed: {last[-1]}")


# --- report ----------------------------------------------------------------------------------------------------


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD") or "(none yet)"
    # appending results to BENCHMARKS.md does not change what is measured, so it does not make the tree dirty
    dirty = git("status", "--porcelain", "--", ".", ":(exclude)BENCHMARKS.md")
    return sha + ("+dirty" if dirty else "")


def venv_versions(python: Path, packages: Sequence[str]) -> str:
    script = (
        "import importlib.metadata as m, platform, sys\n"
        "print('Python ' + platform.python_version(), *(f'{p} {m.version(p)}' for p in sys.argv[1:]), sep=', ')"
    )
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


def table(results: Sequence[Result], rounds: int) -> str:
    by_id = {r.case.id: r for r in results}
    per_round = rounds > 1
    head = [
        "case",
        "server",
        "path",
        "rps" + (" (median)" if per_round else ""),
        "p50 ms",
        "p99 ms",
        "ratio (rps vs peers)",
    ]
    if per_round:
        head.insert(4, "rps per round")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        name = f"**{r.case.name}**" if r.case.is_keel else r.case.name
        rps = f"**{r.rps:.0f}**" if r.case.is_keel else f"{r.rps:.0f}"
        row = [name, r.case.server, f"`{r.case.path}`", rps, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", ratios(r, by_id)]
        if per_round:
            row.insert(4, " / ".join(f"{s.rps:.0f}" for s in r.samples))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def method_line(rounds: int) -> str:
    rounds_text = f"{rounds} rounds, every case once per round, median per case" if rounds > 1 else "one round"
    return (
        f"Method: each case a fresh server on CPU {SERVER_CPU} (`taskset -c {SERVER_CPU}`), a {WARMUP_S} s wrk "
        f"warm-up thrown away, then `taskset -c {CLIENT_CPU} wrk -t1 -c{CONNECTIONS} -d{DURATION_S}s --latency "
        f"--timeout={TIMEOUT}`; {rounds_text}; access logs off; keel on SQLite in a temporary directory with "
        "`KEEL_LOG_LEVEL=warning` and a rate limit that never trips. Ratios: keel rps / bare ASGI and plain Litestar "
        "on the same server, and / naive FastAPI on uvicorn."
    )


def section(results: Sequence[Result], rounds: int, started: datetime) -> str:
    facts = "\n".join(f"- {fact}" for fact in machine_facts())
    notes = "\n".join(f"- {r.case.id}: {r.problems}" for r in results if r.problems)
    parts = [
        f"## {started:%Y-%m-%d %H:%M} UTC — commit {git_commit()}",
        facts,
        method_line(rounds),
        table(results, rounds),
    ]
    if notes:
        parts.append("Errors reported by wrk:\n" + notes)
    return "\n\n".join(parts) + "\n"


def append_benchmarks(text: str) -> None:
    if not BENCHMARKS.exists():
        BENCHMARKS.write_text("# Benchmarks\n\nAppended by `make bench` (bench/run.py).\n")
    existing = BENCHMARKS.read_text()
    BENCHMARKS.write_text(existing.rstrip("\n") + "\n\n" + text)


# --- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="run every case N times, interleaved; report medians")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="run only cases whose id contains SUBSTRING (repeatable), e.g. keel, granian, public",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table, do not append to BENCHMARKS.md")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SHARED_BENCH.is_dir():
        print(f"bench: the peers folder {SHARED_BENCH} is missing (expected ../shared/bench beside the repo)")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    try:
        cases = interleave(keel_cases(workdir), peer_cases(workdir))
        if args.list:
            print("\n".join(f"{c.id:28} {c.name} on {c.server}, GET {c.path}" for c in cases))
            return 0
        cases = [c for c in cases if not args.only or any(s in c.id for s in args.only)]
        if not cases:
            print(f"bench: no case id contains any of {args.only}; see --list")
            return 1
        return run(cases, args.rounds, workdir, write=not args.no_write)
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; nothing written")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(cases: Sequence[Case], rounds: int, workdir: Path, *, write: bool) -> int:
    ensure_cpus()
    ensure_wrk()
    if any(not c.is_keel for c in cases):
        ensure_peers_venv()
    if any(c.is_keel for c in cases):
        migrate_keel(workdir)
    started = datetime.now(UTC)
    logs = RESULTS / f"{started:%Y%m%dT%H%M%SZ}"
    logs.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[Sample]] = {c.id: [] for c in cases}
    minutes = math.ceil(len(cases) * rounds * (WARMUP_S + DURATION_S + 2) / 60)
    print(f"bench: {len(cases)} cases x {rounds} round(s), about {minutes} min; logs in {logs}", flush=True)
    for n in range(rounds):
        for case in cases:
            sample = measure(case, logs, f"r{n + 1}")
            samples[case.id].append(sample)
            print(
                f"  round {n + 1}/{rounds}  {case.id:26} {sample.rps:9.0f} rps  p50 {sample.p50_ms:7.2f} ms  "
                f"p99 {sample.p99_ms:7.2f} ms",
                flush=True,
            )
    results = [Result(c, tuple(samples[c.id])) for c in cases]
    report = section(results, rounds, started)
    (logs / "results.json").write_text(
        json.dumps([{"case": r.case.id, "samples": [asdict(s) for s in r.samples]} for r in results], indent=2)
    )
    print("\n" + report)
    if write:
        append_benchmarks(report)
        print(f"bench: appended to {BENCHMARKS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
