"""The export thread's CPU per span: encoding a batch for OTLP, and the whole export (encoding and the POST).

`.venv/bin/python bench/export_cost.py [--compression gzip]` (another tree: `PYTHONPATH=<tree>/src`)

keel's telemetry is set up as under `keel serve` with every request sampled, pointed at bench/otlp_sink.py (started
here, on CPU 1 when there are two); 512 server spans of `GET /api/v1/public` (bench/span_cost.py's request) make
one batch, the default OTEL_BSP_MAX_EXPORT_BATCH_SIZE. The figures are the thread's CPU time (`time.thread_time`)
per span, the minimum over 30 repetitions: `keel.otlp.encode_spans` alone, then the exporter's `export` (encoding,
OTEL_EXPORTER_OTLP_COMPRESSION's compression, the HTTP POST and its answer). Pin the process (`taskset -c 0`).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import free_port
from span_cost import REQUEST_HEADERS, RESPONSE_HEADERS, request_scope

SINK = Path(__file__).resolve().parent / "otlp_sink.py"
BATCH = 512


def measure(compression: str | None) -> str:
    from sqlalchemy.ext.asyncio import create_async_engine

    from keel import otlp, telemetry
    from keel.settings import Settings

    endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    engine = create_async_engine(f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='keel-export-')}/keel.db")
    telemetry.setup(Settings(_env_file=None, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_TRACES_SAMPLER_ARG="1"), engine)
    provider = telemetry._provider
    assert provider is not None
    scope = request_scope(REQUEST_HEADERS)
    for _ in range(BATCH):
        span = telemetry.start_server_span(scope)
        assert span is not None
        span.response_started(200, RESPONSE_HEADERS)
        span.finish()
        span.detach()
    batch = list(provider.queue._spans)
    provider.queue._spans.clear()
    encode, export = float("inf"), float("inf")
    for _ in range(30):
        started = time.thread_time()
        data = otlp.encode_spans(batch)
        encode = min(encode, time.thread_time() - started)
        started = time.thread_time()
        result = provider.queue.exporter.export(batch)
        export = min(export, time.thread_time() - started)
        assert result.name == "SUCCESS", result
    return (
        f"compression {compression or 'none (the default)'}: {len(data) / BATCH:.0f} bytes a span before compression "
        f"({len(gzip.compress(data)) / BATCH:.0f} gzipped); "
        f"encoding {encode / BATCH * 1e6:.2f} µs a span, the whole export {export / BATCH * 1e6:.2f} µs a span"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compression", help="OTEL_EXPORTER_OTLP_COMPRESSION: gzip, deflate or none")
    args = parser.parse_args()
    port = free_port()
    pin = ["taskset", "-c", "1"] if len(os.sched_getaffinity(0)) > 1 or os.cpu_count() == 2 else []
    sink = subprocess.Popen([*pin, sys.executable, str(SINK), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        sink.stdout.readline()  # "listening on ..."
        os.environ |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",  # the exporter reads these itself
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_MAX_QUEUE_SIZE": str(BATCH * 4),
            "OTEL_BSP_SCHEDULE_DELAY": "100000000",  # the queue's thread stays asleep: this thread exports
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(BATCH * 4),
        }
        if args.compression:
            os.environ["OTEL_EXPORTER_OTLP_COMPRESSION"] = args.compression
        print(measure(args.compression), flush=True)
    finally:
        sink.terminate()
        sink.wait()
    os._exit(0)  # the telemetry's export thread is a daemon; nothing is left to flush


if __name__ == "__main__":
    main()
