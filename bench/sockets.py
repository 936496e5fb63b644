"""Connections at the limit (issue 16): memory per idle socket and the cost of one message to all of them.

    .venv/bin/python bench/sockets.py --kind ws --kind sse -n 5000 -n 18000 [--sources 4] [--budget-s 600]
    [--baseline-src DIR]  # also run keel from another tree's src/ (PYTHONPATH), interleaved with this one

For each kind and N, on a fresh `keel serve` pinned to CPU 0 (one worker; this process on CPU 1): N subscribers
connect (WebSockets subscribed to the bench channel, or `GET /events` streams on it), round-robin over --sources
loopback source addresses (127.0.0.2, 127.0.0.3, ...: one address has only ~28 000 ephemeral ports), idle for
--settle-s (past keel's 20 s WebSocket ping, so heartbeats are on and answered), and the server's RSS delta over N is
the memory per socket. Then a WebSocket publisher (another socket) publishes --publishes messages, one at a time:
each is timed from just before its send to its arrival at every subscriber (raw sockets on one epoll, only recv and
a marker check while a publish is measured, as bench/realtime.py), and a subscriber without it by DELIVERY_TIMEOUT_S
counts as lost. The server's CPU time per publish (user + system, /proc) is read around each one.

RSS delta / N understates the cost of a socket at small N: startup leaves ~7-10 MiB free inside the C heap, resident,
which the first few thousand connections reuse (so the figure "rises" with N). With two N or more, each kind's
marginal cost between consecutive N, (delta(N2) - delta(N1)) / (N2 - N1), is printed too, and the line through the
two largest N, delta = m * N - R, projected to 50 000 (`m - R / 50 000`); set and dict tables grow by powers of two,
so a figure moves by up to ~0.4 KiB with where N falls between them (BENCHMARKS.md, 2026-12-06).

The run bounds itself: N above the fd hard limit less a margin is refused up front (`ulimit -Hn`: setrlimit above it
is refused), connecting stops at --budget-s, and a fan-out that a subscriber has not seen by DELIVERY_TIMEOUT_S is
counted, not waited for.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import select
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

import realtime
from run import CLIENT_CPU, KEEL_SERVE, BenchError, Case, keel_bench_token, migrate_keel

FD_MARGIN = 500  # fds each process keeps for everything else
DELIVERY_TIMEOUT_S = 10.0
PUBLISH_GAP_S = 0.5
NAN = float("nan")


@dataclass(frozen=True)
class Result:
    target: str
    kind: str
    n: int
    kib_per_socket: float
    p50_ms: float  # medians over the publishes
    p99_ms: float
    max_ms: float
    lost: int  # deliveries missing, over all publishes
    cpu_ms: float  # the server's CPU time per publish (median)
    connect_s: float

    def line(self) -> str:
        return (
            f"{self.target:9} {self.kind:3} N={self.n:<6} {self.kib_per_socket:5.1f} KiB/socket  p50 {self.p50_ms:6.1f}"
            f" p99 {self.p99_ms:6.1f} max {self.max_ms:6.1f} ms  lost {self.lost}  server CPU {self.cpu_ms:6.1f} ms/msg"
            f"  (connected in {self.connect_s:.0f} s)"
        )


class Stream:
    """A raw `GET /events` stream: read as bytes come; ready once the opening `retry:` has arrived."""

    __slots__ = ("chunks", "ready", "sock")

    def __init__(self, server: realtime.Server, source: str) -> None:
        self.sock = realtime.raw_connection(server, source)
        self.sock.sendall(server.events_request())
        self.chunks: list[tuple[float, bytes]] = []
        self.ready = False

    def read(self, now: float) -> bool:
        if (data := realtime.recv_waiting(self.sock)) is None:
            return True
        if not self.ready:
            if not self.chunks and not data.startswith(b"HTTP/1.1 200"):
                status = data.split(b"\r\n", 1)[0]
                raise BenchError(f"GET /events answered {status!r}")
            self.ready = b"retry:" in data
        self.chunks.append((now, data))
        return bool(data)


def open_streams(subs: realtime.Subscribers, n: int, sources: Sequence[str], until: float) -> list[Stream]:
    """N streams on `subs`' epoll (its publisher publishes to them), at most CONNECT_CONCURRENCY opening at once."""
    streams: list[Stream] = []
    by_fd: dict[int, Stream] = {}
    while len(streams) < n or not all(s.ready for s in streams):
        if time.monotonic() > until:
            raise BenchError(f"{sum(s.ready for s in streams)} of {n} streams open by the time budget")
        opening = sum(not s.ready for s in streams)
        for _ in range(min(n - len(streams), realtime.CONNECT_CONCURRENCY - opening)):
            new = Stream(subs.server, sources[len(streams) % len(sources)])
            streams.append(new)
            by_fd[new.sock.fileno()] = new
            subs.poll.register(new.sock, select.EPOLLIN)
        for fd, _ in subs.poll.poll(0.05):
            if (stream := by_fd.get(fd)) is not None:
                if not stream.read(time.perf_counter()):
                    raise BenchError("an event stream closed before its opening")
            else:
                subs.live[fd].read(time.perf_counter())
                subs.live[fd].parse()
    return streams


def collect(
    subs: realtime.Subscribers, readers: Sequence[Stream | realtime.Subscriber], marker: bytes, deadline: float
) -> list[float]:
    """When each reader's bytes first held `marker` (only recv and that check per arrival); lost ones are missing."""
    by_fd = {r.sock.fileno(): r for r in readers}
    waiting = set(by_fd)
    arrived: list[float] = []
    tail = len(marker) - 1
    while waiting and (left := deadline - time.perf_counter()) > 0:
        events = subs.poll.poll(left, len(by_fd) + 1)
        now = time.perf_counter()
        for fd, _ in events:
            reader = by_fd.get(fd) or subs.live.get(fd)
            if reader is None:
                continue
            if not reader.read(now):
                subs.poll.unregister(fd)
                by_fd.pop(fd, None)
                subs.live.pop(fd, None)
                waiting.discard(fd)
                continue
            if fd not in waiting:
                continue
            chunks = reader.chunks
            data = chunks[-1][1]
            if marker in data or (len(chunks) > 1 and marker in chunks[-2][1][-tail:] + data):
                waiting.discard(fd)
                arrived.append(now)
    return arrived


def settle(subs: realtime.Subscribers, streams: Sequence[Stream], seconds: float) -> None:
    """Read everything for `seconds`: WebSockets parse (pongs answer the server's pings), streams drop their bytes."""
    by_fd = {s.sock.fileno(): s for s in streams}
    until = time.perf_counter() + seconds
    while (left := until - time.perf_counter()) > 0:
        for fd, _ in subs.poll.poll(left):
            if (stream := by_fd.get(fd)) is not None:
                stream.read(0.0)
            elif fd in subs.live:
                sub = subs.live[fd]
                if not sub.read(0.0):
                    subs.drop(fd)
                sub.parse()
    for stream in streams:
        stream.chunks.clear()


def cpu_s(process: psutil.Process) -> float:
    """User + system seconds of the server's process tree (taskset execs keel; uvicorn may fork a worker)."""
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        times = p.cpu_times()
        total += times.user + times.system
    return total


def measure(server: realtime.Server, kind: str, n: int, args: argparse.Namespace, until: float) -> Result:
    # never 127.0.0.1: a client socket bound there holds a port that another process's test server may have just
    # been given by a free-port probe (a run with 127.0.0.1 made other tests fail to bind)
    sources = [f"127.0.0.{i + 2}" for i in range(args.sources)]
    time.sleep(1)
    rss_before = server.rss()
    started = time.monotonic()
    budget = max(1.0, until - time.monotonic())
    subs = realtime.Subscribers(server, n if kind == "ws" else 0, sources=sources, timeout=budget)
    streams: list[Stream] = []
    try:
        if kind == "sse":
            streams = open_streams(subs, n, sources, until)
        connect_s = time.monotonic() - started
        settle(subs, streams, args.settle_s)
        rss_idle = server.rss()
        readers: Sequence[Stream | realtime.Subscriber] = streams or subs.subscribers
        run = uuid.uuid4().hex[:12]
        p50, p99, top, cpu, lost = [], [], [], [], 0
        for i in range(args.publishes):
            settle(subs, streams, PUBLISH_GAP_S)
            for r in readers:
                r.chunks.clear()
            body = f"sockets-{run}-{i}"
            gc.disable()
            before = cpu_s(server.process)
            sent = subs.publish(body)
            arrived = collect(subs, readers, body.encode(), sent + DELIVERY_TIMEOUT_S)
            gc.enable()
            time.sleep(0.2)  # the server's last writes and the `published` reply
            cpu.append((cpu_s(server.process) - before) * 1000)
            lost += n - len(arrived)
            ms = [(t - sent) * 1000 for t in arrived]
            if ms:
                p50.append(realtime.percentile(ms, 50))
                p99.append(realtime.percentile(ms, 99))
                top.append(max(ms))
            if kind == "ws":
                subs.arrivals(body)  # parses: an error frame, or a copy twice, is raised
    finally:
        for stream in streams:
            stream.sock.close()
        subs.close()
    median = statistics.median
    return Result(
        server.name,
        kind,
        n,
        (rss_idle - rss_before) / n / 1024,
        median(p50 or [NAN]),
        median(p99 or [NAN]),
        median(top or [NAN]),
        lost,
        median(cpu),
        connect_s,
    )


@contextmanager
def keel(label: str, src: str, workdir: Path, logs: Path, token: str) -> Iterator[realtime.Server]:
    env = dict(realtime.KEEL_REALTIME_ENV)
    if src:
        env["PYTHONPATH"] = src  # ahead of the editable install's path: that tree's keel runs
    case = Case(f"sockets-{label}", "keel", "uvicorn", "/healthz", KEEL_SERVE, workdir, env, variant=label)
    with realtime.serving(case, token, logs / f"sockets-{label}.server.log") as server:
        yield server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", action="append", choices=("ws", "sse"))
    parser.add_argument("-n", type=int, action="append", help="subscribers (repeat for several)")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses")
    parser.add_argument("--settle-s", type=float, default=25.0)
    parser.add_argument("--publishes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=900.0, help="the whole run stops by then")
    parser.add_argument("--baseline-src", default="", help="another tree's src/ to run too, interleaved")
    args = parser.parse_args()
    kinds, ns = args.kind or ["ws"], args.n or [realtime.GOAL_N]
    until = time.monotonic() + args.budget_s
    limit = realtime.raise_fd_limit(0)  # the soft limit up to the hard one, which the server inherits too
    if max(ns) + FD_MARGIN > limit:
        print(f"N={max(ns)} needs more fds than the hard limit ({limit}, ulimit -Hn) less {FD_MARGIN}", file=sys.stderr)
        return 2
    targets = [("this", "")] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    with tempfile.TemporaryDirectory(prefix="keel-sockets-") as tmp:
        workdir = logs = Path(tmp)
        migrate_keel(workdir)
        token = keel_bench_token(workdir, logs, name="sockets-setup", env=realtime.KEEL_REALTIME_ENV)
        results: list[Result] = []
        for round_ in range(args.rounds):
            for kind in kinds:
                for n in ns:
                    for label, src in targets if round_ % 2 == 0 else reversed(targets):
                        if time.monotonic() > until:
                            print("time budget spent: stopping", flush=True)
                            return 1
                        with keel(label, src, workdir, logs, token) as server:
                            try:
                                result = measure(server, kind, n, args, until)
                            except BenchError as exc:
                                print(f"{label:9} {kind:3} N={n:<6} failed: {exc}", flush=True)
                                continue
                        print(result.line(), f" load {os.getloadavg()[0]:.2f}", flush=True)
                        results.append(result)
    print_marginal(results)
    return 0


def print_marginal(results: Sequence[Result], projected_n: int = 50_000) -> None:
    """Each target and kind's marginal KiB a socket between consecutive N (medians over rounds), and the line
    through the two largest N projected to `projected_n` (see the module's docstring)."""
    deltas: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in results:
        deltas.setdefault((r.target, r.kind), {}).setdefault(r.n, []).append(r.kib_per_socket * r.n)
    for (target, kind), by_n in deltas.items():
        points = sorted((n, statistics.median(kib)) for n, kib in by_n.items())
        if len(points) < 2:
            continue
        steps = [f"{n1}->{n2}: {(d2 - d1) / (n2 - n1):.2f}" for (n1, d1), (n2, d2) in itertools.pairwise(points)]
        (n1, d1), (n2, d2) = points[-2:]
        slope = (d2 - d1) / (n2 - n1)
        reserve = slope * n2 - d2  # KiB the first sockets took from memory already resident
        print(
            f"{target:9} {kind:3} marginal KiB/socket {', '.join(steps)}; reserve {reserve / 1024:.1f} MiB; "
            f"at N={projected_n}: {slope - reserve / projected_n:.1f} KiB/socket"
        )


if __name__ == "__main__":
    sys.exit(main())
