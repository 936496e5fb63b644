"""The observability scenario of `make bench` (`--only observability`): what the access log, metrics and tracing cost.

keel before observability (the `--baseline-rev`, default af44228, checked out in a throwaway worktree under
bench/results/ with its own venv, migrated and given its own bench user) against today's keel in three configurations,
every one with metrics (always on) and the access log (`KEEL_LOG_LEVEL=info`) on:

- (c) no OTLP endpoint: tracing off;
- (b) tracing on, exporting to a local sink, with keel's default sampler (parent-based, 10 % of new traces);
- (a) the same with `OTEL_TRACES_SAMPLER=always_on` (every request traced and exported).

Plus today's keel as the standard rows run it (`KEEL_LOG_LEVEL=warning`: no access log), which tells the access
line's share from the rest. Each configuration serves `GET /api/v1/public` and `GET /api/v1/protected`, measured as
run.py measures every case (fresh `keel serve` on CPU 0, wrk on CPU 1, warm-up, run); the baseline runs with run.py's
standard env. The order of the configurations rotates from round to round. The goals are on the cost
1 - rps/baseline's rps: (c) ≤ 5 %, (b) ≤ 10 %, (a) ≤ 25 %.

The sink (bench/otlp_sink.py) is a separate process pinned to CPU 1 with wrk, so it takes nothing from the server's
core; the harness reads its counters around each case (exports and bytes) and, before stopping the server, keel's
`keel_spans_dropped_total` (spans the batch processor could not queue).

Then the WebSocket fan-out to GOAL_N subscribers (bench/realtime.py's scenario, unchanged) on (c), (b) and (a): its
p99 must stay ≤ 100 ms with tracing on, next to the same run's figure without tracing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import statistics
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import realtime
from run import (
    CLIENT_CPU,
    CONNECTIONS,
    DURATION_S,
    HOST,
    KEEL_BIN,
    KEEL_ENV,
    KEEL_SERVE,
    KEEL_TOKEN,
    RESULTS,
    ROOT,
    SERVER_CPU,
    TIMEOUT,
    WARMUP_S,
    BenchError,
    Case,
    Sample,
    check_limiter,
    free_port,
    keel_bench_token,
    met,
    migrate_keel,
    parse_wrk,
    percent,
    run_wrk,
    running,
    stop,
    wait_until_serving,
    wrk_argv,
)

OBSERVABILITY_ID = "observability"
BASELINE_REV = "af44228"  # the merge before any observability work (issue 11)
SINK = ROOT / "bench" / "otlp_sink.py"
PATHS = ("/api/v1/public", "/api/v1/protected")
ACCESS_LOG = {"KEEL_LOG_LEVEL": "info"}
SAMPLE_ALL = {"OTEL_TRACES_SAMPLER": "always_on"}
FANOUT_N = realtime.GOAL_N
SINK_START_S = 10.0


@dataclass(frozen=True, slots=True)
class Variant:
    key: str  # the case id's tail
    label: str
    goal: float | None  # the cost goal against the baseline, if any
    traced: bool = False
    env: Mapping[str, str] | None = None  # over KEEL_ENV; the endpoint is added when traced


VARIANTS = (
    Variant("baseline", "before observability", None),
    Variant("log-off", "today, access log off (`warning`)", None),
    Variant("c", "(c) no endpoint", 0.05, env=ACCESS_LOG),
    Variant("b", "(b) tracing, default sampler (10 %)", 0.10, traced=True, env=ACCESS_LOG),
    Variant("a", "(a) tracing, always_on (100 %)", 0.25, traced=True, env={**ACCESS_LOG, **SAMPLE_ALL}),
)
FANOUT_VARIANTS = ("c", "b", "a")


@dataclass(frozen=True, slots=True)
class Measured:
    """One case in one round: wrk's sample, what reached the sink meanwhile, and the spans keel dropped."""

    sample: Sample
    exports: int
    export_bytes: int
    dropped_spans: float | None  # None where the server has no such metric (the baseline)


@dataclass(frozen=True, slots=True)
class HttpRow:
    variant: str  # Variant.key
    path: str
    rounds: tuple[Measured, ...]

    def median(self, figure: str) -> float:
        return statistics.median(float(getattr(m.sample, figure)) for m in self.rounds)


@dataclass(frozen=True, slots=True)
class ObservabilityResult:
    baseline_rev: str
    baseline_sha: str
    rows: tuple[HttpRow, ...]
    fanouts: tuple[realtime.FanOut, ...]
    rounds: int
    fd_limit: int
    fanout_error: str = ""  # the first fan-out round that failed, if any


def estimate_s(rounds: int) -> int:
    http_s = len(VARIANTS) * len(PATHS) * (WARMUP_S + DURATION_S + 4)
    fanout_s = len(FANOUT_VARIANTS) * (15 + FANOUT_N / 200 + realtime.PUBLISHES * realtime.PUBLISH_GAP_S + 1)
    return int(rounds * (http_s + fanout_s) + 60)


# --- the baseline ----------------------------------------------------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def baseline_tree(rev: str) -> tuple[Path, str]:
    """A worktree of `rev` under bench/results/ with its own venv (`uv sync --frozen`); its path and full sha."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = RESULTS / f"baseline-{sha[:7]}"
    if not (tree / ".git").exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(tree), sha)
    elif git("rev-parse", "HEAD", cwd=tree) != sha:
        git("checkout", "--detach", sha, cwd=tree)
    uv = KEEL_BIN / "uv"
    done = subprocess.run([str(uv), "sync", "--frozen", "--quiet"], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"uv sync in the baseline worktree {tree}: {done.stderr.strip()[-300:]}")
    return tree, sha


# --- the sink --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sink(logs: Path) -> Iterator[int]:
    """bench/otlp_sink.py on the client CPU, its output in a file; yields its port."""
    port = free_port()
    argv = ["taskset", "-c", CLIENT_CPU, str(KEEL_BIN / "python"), str(SINK), str(port)]
    with (logs / "otlp-sink.log").open("w") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        case = Case("otlp-sink", "sink", "", "/stats", (), ROOT)
        wait_until_serving(case, port, proc, logs / "otlp-sink.log")
        yield port
    finally:
        stop(proc)


def sink_stats(port: int) -> tuple[int, int]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return int(stats["posts"]), int(stats["bytes"])


def dropped_spans(port: int) -> float | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        conn.close()
    if response.status != 200:
        return None
    match = re.search(r"^keel_spans_dropped_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


# --- the run ---------------------------------------------------------------------------------------------------


def cases(variants: Sequence[Variant], workdir: Path, baseline: Path, sink_port: int) -> dict[str, list[Case]]:
    """Per variant, its public and protected case; the baseline serves from its own venv and database."""
    endpoint = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    by_variant = {}
    for v in variants:
        env = {**KEEL_ENV, **(v.env or {}), **(endpoint if v.traced else {})}
        argv, cwd = KEEL_SERVE, workdir
        if v.key == "baseline":
            argv, cwd = (str(baseline / ".venv" / "bin" / "keel"), *KEEL_SERVE[1:]), workdir / "baseline"
        # each keel serves its own tree's source: a worktree sharing another checkout's venv (whose editable install
        # points there) would otherwise serve that checkout's code, and a PYTHONPATH left in the environment would
        # make the baseline serve today's
        env["PYTHONPATH"] = str(source_of(argv[0]))
        by_variant[v.key] = [
            Case(
                f"obs-{v.key}-{path.rsplit('/', 1)[-1]}",
                "keel",
                "uvicorn",
                path,
                argv,
                cwd,
                env,
                (f"Authorization: Bearer {KEEL_TOKEN}",) if path.endswith("protected") else (),
                variant=v.label,
            )
            for path in PATHS
        ]
    return by_variant


def source_of(keel: str) -> Path:
    """The `src` of the tree whose venv holds the `keel` executable (venvs may be symlinks: the path is not
    resolved)."""
    return Path(keel).parent.parent.parent / "src"


def measure_case(case: Case, logs: Path, label: str, sink_port: int) -> Measured:
    """run.measure's steps, plus the sink's counters around the run and keel's dropped spans before it stops."""
    port = free_port()
    with running(case, port, logs / f"{case.id}.{label}.server.log"):
        check_limiter(case, port)
        run_wrk(wrk_argv(case, port, WARMUP_S), WARMUP_S)
        posts, size = sink_stats(sink_port)
        argv = wrk_argv(case, port, DURATION_S)
        output = run_wrk(argv, DURATION_S)
        posts_after, size_after = sink_stats(sink_port)
        dropped = dropped_spans(port)
    (logs / f"{case.id}.{label}.wrk.txt").write_text(" ".join(argv) + "\n\n" + output)
    return Measured(parse_wrk(output), posts_after - posts, size_after - size, dropped)


def measure(workdir: Path, logs: Path, keel_token: str, rounds: int, baseline_rev: str) -> ObservabilityResult:
    """The baseline's setup, then every round: the HTTP cases (rotated), then the fan-out on (c), (b), (a)."""
    tree, sha = baseline_tree(baseline_rev)
    baseline_dir = workdir / "baseline"
    baseline_dir.mkdir(exist_ok=True)
    migrate_keel(baseline_dir, tree / ".venv" / "bin")
    baseline_serve = (str(tree / ".venv" / "bin" / "keel"), *KEEL_SERVE[1:])
    baseline_token = keel_bench_token(baseline_dir, logs, baseline_serve, "baseline-setup")
    fd_limit = realtime.raise_fd_limit(FANOUT_N)
    samples: dict[str, list[Measured]] = {}
    fanouts: list[realtime.FanOut] = []
    fanout_error = ""
    with sink(logs) as sink_port:
        by_variant = cases(VARIANTS, workdir, tree, sink_port)
        tokens = {"baseline": baseline_token}
        for n in range(rounds):
            turn = n % len(VARIANTS)
            for v in (*VARIANTS[turn:], *VARIANTS[:turn]):
                for case in by_variant[v.key]:
                    headers = tuple(h.replace(KEEL_TOKEN, tokens.get(v.key, keel_token)) for h in case.headers)
                    m = measure_case(replace(case, headers=headers), logs, f"r{n + 1}", sink_port)
                    samples.setdefault(case.id, []).append(m)
                    print(
                        f"  observability  round {n + 1}/{rounds}  {case.id:22} {m.sample.rps:9.0f} rps  "
                        f"p99 {m.sample.p99_ms:7.2f} ms  exports {m.exports:5}  {m.export_bytes / 1e6:7.1f} MB",
                        flush=True,
                    )
            targets = [(fanout_case(by_variant[k][0]), keel_token) for k in FANOUT_VARIANTS]
            affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the clients must not take the server's CPU
            try:
                fanouts += realtime.fan_out_rounds(targets, (FANOUT_N,), logs, 1)
            except BenchError as exc:  # the HTTP figures are still worth writing
                fanout_error = fanout_error or f"round {n + 1}: {exc}"
                print(f"bench: fan-out not measured: {exc}", flush=True)
            finally:
                os.sched_setaffinity(0, affinity)
    rows = tuple(
        HttpRow(v.key, case.path, tuple(samples[case.id]))
        for path in PATHS
        for v in VARIANTS
        for case in by_variant[v.key]
        if case.path == path
    )
    return ObservabilityResult(baseline_rev, sha, rows, tuple(fanouts), rounds, fd_limit, fanout_error)


def fanout_case(case: Case) -> Case:
    """A variant's case for the fan-out: the same env, plus what realtime.py's keel case sets."""
    env = {**realtime.KEEL_REALTIME_ENV, **case.env}
    return replace(case, id=case.id.rsplit("-", 1)[0], env=env)


# --- report ----------------------------------------------------------------------------------------------------


def variant(key: str) -> Variant:
    return next(v for v in VARIANTS if v.key == key)


def cost_text(row: HttpRow, base: HttpRow) -> str:
    cost = 1 - row.median("rps") / base.median("rps")
    text = f"**{percent(cost)}**"
    if len(row.rounds) > 1:
        per_round = " / ".join(
            f"{(1 - m.sample.rps / b.sample.rps) * 100:.1f}" for m, b in zip(row.rounds, base.rounds, strict=True)
        )
        text += f" (rounds {per_round} %)"
    return text


def exported_text(row: HttpRow) -> str:
    if not variant(row.variant).traced:
        return "—"
    exports = statistics.median(m.exports for m in row.rounds)
    mb = statistics.median(m.export_bytes for m in row.rounds) / 1e6
    dropped = [m.dropped_spans for m in row.rounds if m.dropped_spans is not None]
    text = f"{exports:.0f} exports, {mb:.1f} MB"
    return text + (f"; {statistics.median(dropped):.0f} spans dropped" if dropped else "")


def http_table(result: ObservabilityResult) -> str:
    per_round = result.rounds > 1
    head = ["configuration", "path", "rps" + (" (median)" if per_round else "")]
    head += ["rps per round"] if per_round else []
    head += ["p50 ms", "p99 ms", "cost: 1 - rps/baseline", "p99 ÷ baseline", "goal", "met", "sent to the sink (10 s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.rows:
        v = variant(row.variant)
        base = next(r for r in result.rows if r.variant == "baseline" and r.path == row.path)
        label = f"{v.label} ({result.baseline_rev})" if v.key == "baseline" else v.label
        errors = sum(m.sample.non_2xx for m in row.rounds), "; ".join(m.sample.socket_errors for m in row.rounds)
        problems = ", ".join(p for p in (f"{errors[0]} non-2xx" if errors[0] else "", errors[1].strip("; ")) if p)
        cells = [label, f"`{row.path}`", f"**{row.median('rps'):.0f}**" + (f" ({problems})" if problems else "")]
        if per_round:
            cells.append(" / ".join(f"{m.sample.rps:.0f}" for m in row.rounds))
        cells += [f"{row.median('p50_ms'):.2f}", f"{row.median('p99_ms'):.2f}"]
        if v.key == "baseline":
            cells += ["the reference", "", "", "", "—"]
        else:
            cost = 1 - row.median("rps") / base.median("rps")
            cells += [cost_text(row, base), f"{row.median('p99_ms') / base.median('p99_ms'):.2f}"]
            cells += [f"≤ {percent(v.goal, 0)}", met(cost <= v.goal)] if v.goal is not None else ["", ""]
            cells.append(exported_text(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fanout_table(result: ObservabilityResult) -> str:
    lines = ["| WS fan-out, N=5000, 20 publishes | keel | goal | met |", "|---|---|---|---|"]
    for key in FANOUT_VARIANTS:
        v = variant(key)
        rounds = realtime.FanOutRounds(v.label, tuple(f for f in result.fanouts if f.target == f"keel, {v.label}"))
        if not rounds.rounds:
            continue
        goal, verdict = (
            (f"p99 ≤ {realtime.GOAL_P99_MS:.0f} ms", met(realtime.fanout_met(rounds))) if v.traced else ("", "")
        )
        lines.append(f"| {v.label} | {realtime.fanout_text(rounds, True)} | {goal} | {verdict} |")
    return "\n".join(lines)


def method_line(result: ObservabilityResult) -> str:
    rounds = f"{result.rounds} rounds, medians" if result.rounds > 1 else "one round"
    return (
        f"Observability scenario ({rounds}; the order of the configurations rotates by one each round): "
        f"`GET /api/v1/public` and `/api/v1/protected`, each configuration a fresh `keel serve` on CPU {SERVER_CPU}, "
        f"wrk on CPU {CLIENT_CPU} (`-t1 -c{CONNECTIONS} -d{DURATION_S}s --timeout={TIMEOUT}` after a {WARMUP_S} s "
        f"warm-up), limiter on and never tripping as in the standard rows. The baseline is keel at "
        f"{result.baseline_rev} ({result.baseline_sha[:10]}, before any observability work), built in a worktree "
        "under bench/results/ with its own venv (`uv sync --frozen`), migrated and given its own bench user, run "
        "with the standard rows' env (`KEEL_LOG_LEVEL=warning`). Today's keel runs with metrics on (always) and, "
        "except the `warning` row, the access log on (`KEEL_LOG_LEVEL=info`, one line per request into the server's "
        "log file in bench/results/). (b) and (a) export with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` to "
        "`bench/otlp_sink.py`, a separate process pinned to CPU 1 beside wrk that reads each `POST /v1/traces` and "
        "answers 200 with an empty protobuf body; (a) adds `OTEL_TRACES_SAMPLER=always_on`, (b) keeps keel's default "
        "(parent-based, 10 % of new traces; wrk sends no `traceparent`). Cost = 1 - rps/baseline rps, from the "
        "medians (then per round, each pair from the same round); the last column is what reached the sink during "
        "the 10 s run and keel's `keel_spans_dropped_total` at its end. The fan-out is bench/realtime.py's "
        f"(N={FANOUT_N}, one keel server per configuration and round, after that round's HTTP cases; fd limit "
        f"{result.fd_limit}) on (c), (b) and (a), so the no-tracing figure is the same run's."
    )


def report(result: ObservabilityResult) -> list[str]:
    """The method paragraph and both tables, for run.py's BENCHMARKS.md section."""
    failed = [f"WS fan-out not measured in every round: {result.fanout_error}"] if result.fanout_error else []
    return [method_line(result), http_table(result), fanout_table(result), *failed]
