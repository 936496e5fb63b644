"""Every Prometheus metric keel exports (SPEC §9), and the `/metrics` exposition that adds up all workers.

One process (`keel serve`, tests): the metrics live in prometheus_client's default registry, plain floats behind a
lock, and `/metrics` renders that registry (with the process and GC collectors).

Several workers (`keel serve --workers N`): `keel serve` makes a fresh directory and names it in
PROMETHEUS_MULTIPROC_DIR before uvicorn spawns the workers, so prometheus_client, imported afresh in each spawned
worker, keeps every value in a per-process mmap file there. `/metrics`, in whichever worker answers, merges every
file (`MultiProcessCollector`): counters and histograms sum over all workers, dead ones included (their counts
happened); gauges are `livesum`, so they sum over the workers alive. A worker that ends cleanly removes its gauge
files at the end of its lifespan; one that was killed cannot, so each scrape first removes the gauge files of
processes that no longer exist (uvicorn's supervisor replaces a dead worker, but offers no hook to clean up after
it). The per-process CPU and memory collectors have no multiprocess form and are absent in that mode.

`_created` samples are off, so the exposition is the same in both modes.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
from bisect import bisect_left
from typing import Any, Final

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated

MULTIPROCESS_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, read in every worker
CONTENT_TYPE: Final = prometheus_client.CONTENT_TYPE_LATEST
UNMATCHED_ROUTE: Final = "<unmatched>"  # the route label of requests no route answered (404, 405): bounded labels
OTHER_METHOD: Final = "OTHER"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# 5 ms (a cached GET) to 10 s (a stuck dependency; requests give up at 5 s): an Argon2 login is 25-100 ms
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKETS_NS: Final = tuple(round(bound * 1e9) for bound in DURATION_BUCKETS)

# -- HTTP (RED), recorded by keel.http.middleware.EdgeMiddleware ---------------------------------------------------
HTTP_REQUESTS: Final = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION: Final = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival at the edge to the end of its response (for /events: the stream's lifetime).",
    ["method", "route"],
    buckets=DURATION_BUCKETS,
)

# -- realtime -------------------------------------------------------------------------------------------------------
WS_CONNECTIONS: Final = Gauge("keel_ws_connections", "Open WebSocket connections.", multiprocess_mode="livesum")
SSE_CONNECTIONS: Final = Gauge("keel_sse_connections", "Open Server-Sent Events streams.", multiprocess_mode="livesum")
REALTIME_MESSAGES: Final = Counter(
    "keel_realtime_messages", "Messages delivered to WebSocket and SSE clients (one per message and follower)."
)
GAP_FILLS: Final = Counter(
    "keel_realtime_gap_fills",
    "Gaps in a channel's live feed read from the database; result=failed closed the feed's followers with 1012.",
    ["result"],
)
for _result in ("filled", "failed"):  # every known label value is exported from the start, at 0
    GAP_FILLS.labels(_result)
SEQ_WATCH_READS: Final = Counter(
    "keel_realtime_seq_watch_reads",
    "Reads of the followed channels' last_seq by the watch that finds committed messages no broker carried.",
)
SEQ_WATCH_FILLS: Final = Counter(
    "keel_realtime_seq_watch_fills",
    "Feeds the watch found behind the database for a whole interval (a message committed, never published).",
)
BROKER_RECONNECTS: Final = Counter(
    "keel_broker_reconnects", "Times the broker's Redis pub/sub connection came back after an outage."
)

# -- rate limiting --------------------------------------------------------------------------------------------------
RATE_LIMITED: Final = Counter("keel_rate_limited", "Requests the rate limiter rejected.", ["policy"])
LIMITER_ERRORS: Final = Counter(
    "keel_rate_limiter_errors", "Rate-limit checks that failed open because the limiter's backend was unavailable."
)

# -- mail (keel.mail.outbox) ----------------------------------------------------------------------------------------
MAIL_SENT: Final = Counter(
    "keel_mail_sent", "Mails the outbox handed to the SMTP server (or, in development, to var/mail/)."
)
MAIL_RETRIES: Final = Counter("keel_mail_retries", "Mail deliveries that failed and were scheduled again with backoff.")
MAIL_FAILED: Final = Counter(
    "keel_mail_failed", "Mails given up after the last retry; their outbox rows stay, marked failed, for an operator."
)

# -- database, passwords, cache -------------------------------------------------------------------------------------
DB_POOL_IN_USE: Final = Gauge(
    "keel_db_pool_in_use", "Database connections checked out of the SQLAlchemy pool.", multiprocess_mode="livesum"
)
PASSWORD_WAITING: Final = Gauge(
    "keel_password_hashes_waiting",
    "Password hashes queued for a slot in the Argon2 thread pool.",
    multiprocess_mode="livesum",
)
PASSWORD_REFUSED: Final = Counter(
    "keel_password_refusals",
    "Password checks refused with 503 because the Argon2 pool was busy: its queue was full, or the wait timed out.",
    ["reason"],
)
CACHE_LOOKUPS: Final = Counter(
    "keel_cache_lookups", "Read-cache lookups of hot GETs: hit, miss, or error (Redis down: read through).", ["result"]
)

_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
# Requests observed since the last fold, by (method, route, status): [count, ns in all, count per bucket]
_pending: dict[tuple[str, str, int], list[Any]] = {}
_fold_scheduled = False


def observe_request(method: str, route: str, status: int, nanoseconds: int) -> None:
    """Count one HTTP request and its duration (in ns: integer sums and comparisons, cheaper than float's).

    prometheus_client's own calls cost ~3 µs a request (three lock acquisitions, the histogram's bucket scan; 2-core
    development VM), so a request only adds to plain per-label tallies here (~0.6 µs), and the tallies are folded
    into the metrics once per event-loop turn, before any scrape this process answers (`exposition()`). A scrape
    in another worker sees them one loop turn later at most. The labels are bounded: methods are folded, routes
    are templates.
    """
    global _fold_scheduled
    if method not in _METHODS:  # a client picks the method: fold the rare ones, so the labels stay bounded
        method = OTHER_METHOD
    key = (method, route, status)
    tally = _pending.get(key)
    if tally is None:
        tally = _pending[key] = [0, 0, [0] * (len(DURATION_BUCKETS) + 1)]
    tally[0] += 1
    tally[1] += nanoseconds
    tally[2][bisect_left(_BUCKETS_NS, nanoseconds)] += 1  # the first bucket whose bound is >= the duration, or +Inf
    if not _fold_scheduled:
        _fold_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(fold_requests)
        except RuntimeError:  # no loop (a direct call): fold now
            fold_requests()


def fold_requests() -> None:
    """Add the tallies to the Prometheus metrics (their values live in the registry, or in mmap files)."""
    global _fold_scheduled
    _fold_scheduled = False
    for key, (count, nanoseconds, buckets) in _pending.items():
        children = _request_children.get(key)
        if children is None:
            method, route, status = key
            children = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_DURATION.labels(method, route))
            _request_children[key] = children
        children[0].inc(count)
        # Histogram.observe's own steps for `count` observations at once: its non-cumulative bucket values and
        # its sum (prometheus_client's internals, pinned in pyproject.toml; tests/test_metrics.py checks them)
        histogram: Any = children[1]
        histogram._sum.inc(nanoseconds / 1e9)
        for index, observed in enumerate(buckets):
            if observed:
                histogram._buckets[index].inc(observed)
    _pending.clear()


# -- exposition -----------------------------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory of the workers' metric files when this process is one of several, else None."""
    return os.environ.get(MULTIPROCESS_DIR) or None


def exposition() -> bytes:
    """The text exposition of this process, or of every worker together under `keel serve --workers N`."""
    fold_requests()
    directory = multiprocess_dir()
    if directory is None:
        return prometheus_client.generate_latest()
    forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return prometheus_client.generate_latest(registry)


_GAUGE_FILE: Final = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone (killed, so they could not say so themselves)."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        if match := _GAUGE_FILE.search(os.path.basename(path)):
            pids.add(int(match.group(1)))
    for pid in pids:
        if not _is_alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def forget_this_worker() -> None:
    """At the end of a worker's lifespan: its connections and pool are closed, so its live gauges leave the sum."""
    if (directory := multiprocess_dir()) is not None:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid: ours is gone
        return False
    return True
