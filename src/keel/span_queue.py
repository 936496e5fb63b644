"""The export side of keel's spans: a bounded queue of ended spans that a thread of its own sends in batches.

keel/tracing.py's spans are appended here when they end (a deque append, lock-free under the GIL: the event loop
never waits); the thread encodes them with keel/otlp.py and posts them through the SDK's OTLP exporter.
OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_SCHEDULE_DELAY and OTEL_BSP_MAX_EXPORT_BATCH_SIZE size it as the SDK's batch
processor reads them; what does not fit, or what the collector refuses, is counted in `keel_spans_dropped_total`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from keel import otlp

log = logging.getLogger("keel.telemetry")


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name) or default)
    except ValueError:
        log.warning("%s: not a whole number; %d instead", name, default)
        return default
    return value if value > 0 else default


class ExportQueue:
    """Ended spans, sent in batches from a daemon thread: a full batch as soon as there is one, and what waits once
    OTEL_BSP_SCHEDULE_DELAY ms pass without one. Beyond OTEL_BSP_MAX_QUEUE_SIZE a span is dropped at once (and
    counted): the loop never waits."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._spans: deque[Any] = deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()  # the thread's exports and a flush's, one at a time
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="keel-span-export", daemon=True)
        self._thread.start()

    def add(self, span: Any) -> None:  # a LeanSpan, ended
        spans = self._spans
        if len(spans) >= self.max_queue:
            otlp.DROPPED.inc()
            return
        spans.append(span)
        if len(spans) >= self.batch and not self._wake.is_set():
            self._wake.set()

    def flush(self) -> bool:
        """Export everything queued, in this thread."""
        with self._export_lock:
            return self._export_all()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Export what is queued and stop, waiting at most `timeout` seconds; False if that was not enough (a dead
        collector holds an export up). The exporter is shut down either way: that ends a retry's wait, so the
        thread left behind gives up at once instead of retrying to the exporter's timeout."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.exporter.shutdown()
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping:
            # Woken by a full batch: send full batches only and leave the rest for the next. Sending what was there
            # each time let a loop that adds spans as fast as they go out settle at batches of 95-230 spans
            # (always_on under wrk), each paying the POST's fixed cost (requests reads the environment and ~/.netrc
            # per call): 8.1 µs of export thread a span, 6.3 with full batches (BENCHMARKS.md 2026-12-05 14:00). A
            # delay that passes with no full batch sends everything, so no span waits much longer than
            # OTEL_BSP_SCHEDULE_DELAY.
            full = self._wake.wait(self.delay)
            self._wake.clear()
            with self._export_lock:
                self._export_all(self.batch if full and not self._stopping else 1)
        with self._export_lock:
            self._export_all()

    def _export_all(self, at_least: int = 1) -> bool:
        """Send what is queued, in batches, while `at_least` spans wait."""
        spans, ok = self._spans, True
        while len(spans) >= at_least:
            batch = [spans.popleft() for _ in range(min(self.batch, len(spans)))]
            try:
                exported = self.exporter.export(batch) is SpanExportResult.SUCCESS  # LeanSpans: ReadableSpan-like
            except Exception:
                log.exception("span export failed")
                exported = False
            if not exported:
                otlp.DROPPED.inc(len(batch))
                ok = False
        return ok
