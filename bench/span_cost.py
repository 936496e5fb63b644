"""The server span's CPU on the event loop's thread, per request: start, response head, ids, end, detach.

`.venv/bin/python bench/span_cost.py [--ratio 0]` (run it against another tree with `PYTHONPATH=<tree>/src`)

A micro-benchmark for the pieces bench/paired.py measures whole: keel's telemetry is set up as under
`keel serve` (keel's default sampler at `--ratio`, an endpoint nobody answers: nothing is exported, the queue is
emptied between repetitions), and the span of one `GET /api/v1/public` is run 3000 times a repetition. The time is
the thread's CPU time (`time.thread_time`), which other processes on a shared machine do not inflate the way they
do wall time; the figure is the minimum over 25 repetitions. Two requests: one that starts a new trace, and one
whose client sent an unsampled `traceparent` (`-00`, which the default sampler follows at any ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
REQUEST_HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1"), (b"accept", b"*/*")]
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"20"),
    (b"ratelimit", b'"default";r=99;t=1'),
    (b"ratelimit-policy", b'"default";q=100;w=1'),
    (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
]


def cpu_us(run: Callable[[], None], clear: Callable[[], None], n: int = 3000, repetitions: int = 25) -> float:
    best = float("inf")
    for _ in range(repetitions):
        started = time.thread_time()
        for _ in range(n):
            run()
        best = min(best, (time.thread_time() - started) / n * 1e6)
        clear()
    return best


def request_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of `GET /api/v1/public` as the router leaves it (its route template set)."""
    return {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/public",
        "path_template": "/api/v1/public",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def measure(ratio: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from keel import telemetry
    from keel.settings import Settings

    engine = create_async_engine(f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='keel-span-')}/keel.db")
    endpoint = "http://127.0.0.1:9"  # discard: nothing listens, and nothing is sent in time anyway
    telemetry.setup(
        Settings(_env_file=None, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_TRACES_SAMPLER_ARG=ratio), engine
    )
    provider = telemetry._provider
    assert provider is not None
    figures = []
    for label, headers in (
        ("new trace", REQUEST_HEADERS),
        ("client's -00", [*REQUEST_HEADERS, (b"traceparent", TRACEPARENT)]),
    ):
        scope = request_scope(headers)

        def one(scope: Any = scope) -> None:
            span = telemetry.start_server_span(scope)
            assert span is not None
            span.response_started(200, RESPONSE_HEADERS)
            span.ids()
            span.finish()
            span.detach()

        figures.append(f"{label} {cpu_us(one, provider.queue._spans.clear):.2f} µs")
    print(f"ratio {ratio}: " + ", ".join(figures), flush=True)
    os._exit(0)  # the export thread would retry the discard endpoint at shutdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", default="0", help="OTEL_TRACES_SAMPLER_ARG: 0 (nothing sampled) to 1 (all)")
    args = parser.parse_args()
    os.environ |= {"OTEL_BSP_MAX_QUEUE_SIZE": "10000000", "OTEL_BSP_SCHEDULE_DELAY": "100000000"}
    os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = "10000000"
    asyncio.run(measure(args.ratio))


if __name__ == "__main__":
    main()
