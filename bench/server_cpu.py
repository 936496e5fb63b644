"""keel on Granian against plain Litestar on Granian, and both on uvicorn, as server CPU time per request in one run.

`.venv/bin/python bench/server_cpu.py [--rounds 3] [--duration 10]`

Issue 16's goal for `keel serve --server granian`: keel >= 0.9 x plain Litestar on the same server, read here as CPU
µs per request (what a busy, shared machine disturbs least; see bench/cpu_per_request.py, whose measurement this
reuses) and, for reference, wrk's requests per second. Four servers serve `GET /api/v1/public`, each fresh, pinned
to CPU 0 with wrk on CPU 1; their order rotates every round. keel runs as bench/run.py runs it (`keel serve`,
limiter on, KEEL_LOG_LEVEL=warning); the peers are ../shared/bench/peers in .venv-peers. Prints a markdown table.

keel is served from this tree's src/ (PYTHONPATH: the shared venv's editable install points elsewhere).
`--against DIR` serves keel from another src/ too (say the main checkout's, `../main/src`) in the same rounds, as
`keel-<server>-against`. `--production` turns issue 16's full stack on for keel: the access log at info (to the
server's log file), CORS for one origin, and tracing configured (an OTLP endpoint, the default sampler at ratio 0:
nothing sampled); every server, the peers included, then gets `Origin` and `Accept-Encoding: gzip, br` from wrk.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cpu_per_request import measure_case
from run import (
    KEEL_ENV,
    KEEL_SERVE,
    Case,
    ensure_cpus,
    ensure_peers_venv,
    ensure_wrk,
    migrate_keel,
    peer_cases,
)

PATH = "/api/v1/public"


SRC = Path(__file__).resolve().parent.parent / "src"
ORIGIN = "https://app.example.com"
PRODUCTION_ENV = {
    "KEEL_LOG_LEVEL": "info",
    "KEEL_LOG_FORMAT": "json",
    "KEEL_CORS_ORIGINS": ORIGIN,
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # nothing is sampled, so nothing is sent
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_TRACES_SAMPLER_ARG": "0",
}
PRODUCTION_HEADERS = (f"Origin: {ORIGIN}", "Accept-Encoding: gzip, br")


def cases(workdir: Path, against: Path | None = None, production: bool = False) -> list[Case]:
    trees = {"": SRC, **({"-against": against} if against else {})}
    extra = PRODUCTION_ENV if production else {}
    headers = PRODUCTION_HEADERS if production else ()
    keel = [
        Case(
            f"keel-{server}{suffix}",
            "keel",
            server,
            PATH,
            (*KEEL_SERVE, "--server", server),
            workdir,
            {**KEEL_ENV, **extra, "PYTHONPATH": str(src)},
            headers,
        )
        for suffix, src in trees.items()
        for server in ("granian", "uvicorn")
    ]
    peers = [
        dataclasses.replace(case, headers=(*case.headers, *headers))
        for case in peer_cases(workdir)
        if case.id in {"litestar-granian-public", "litestar-uvicorn-public"}
    ]
    return [*keel, *peers]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--against", type=Path, help="another src/ to serve keel from in the same rounds")
    parser.add_argument("--production", action="store_true", help="access log at info, CORS, tracing configured")
    options = parser.parse_args(argv)
    ensure_wrk()
    ensure_cpus()
    ensure_peers_venv()
    figures: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="keel-server-cpu-") as directory:
        workdir = Path(directory)
        logs = workdir / "logs"
        logs.mkdir()
        migrate_keel(workdir)
        every = cases(workdir, options.against, options.production)
        for round_ in range(options.rounds):
            order = every[round_ % len(every) :] + every[: round_ % len(every)]
            for case in order:
                figure = measure_case(case, logs, f"r{round_}", options.duration)
                figures.setdefault(case.id, []).append(figure)
                print(f"  round {round_ + 1}: {case.id}: {figure[0]:.1f} µs/request, {figure[1]:.0f} rps", flush=True)
    cpu = {case_id: statistics.median(f[0] for f in samples) for case_id, samples in figures.items()}
    rps = {case_id: statistics.median(f[1] for f in samples) for case_id, samples in figures.items()}
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| server | µs CPU/request | rps | keel ÷ Litestar (CPU: Litestar µs ÷ keel µs) | keel ÷ Litestar (rps) |")
    print("|---|---:|---:|---:|---:|")
    for server in ("granian", "uvicorn"):
        litestar = f"litestar-{server}-public"
        keels = [case_id for case_id in cpu if case_id.startswith(f"keel-{server}")]
        for case_id in (*keels, litestar):
            ratio_cpu = f"{cpu[litestar] / cpu[case_id]:.2f}" if case_id in keels else ""
            ratio_rps = f"{rps[case_id] / rps[litestar]:.2f}" if case_id in keels else ""
            rounds = " / ".join(f"{f[0]:.1f}" for f in figures[case_id])
            print(f"| {case_id} | {cpu[case_id]:.1f} ({rounds}) | {rps[case_id]:.0f} | {ratio_cpu} | {ratio_rps} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
