"""What Litestar's concurrent dependency resolution costs a request, and what keel's SequentialDependencies saves.

`.venv/bin/python bench/dependencies.py [--rounds 5] [--requests 12800]`

A Litestar app with two trivial async dependencies, driven in-process (no server) 64 requests at a time on uvloop:
`GET /one` takes one dependency, `GET /two` both, which Litestar resolves in an anyio task group per request
(litestar-org/litestar#4563); the same app with keel.http.deps.SequentialDependencies resolves them one after the
other in the request's task. The figure is CPU time (`time.process_time`) per request, the median over --rounds,
the three apps interleaved within each round. keel's own routes with several dependencies are the sign-in, sign-up,
refresh, logout, password and mail endpoints, `POST /channels` and `/readyz` (tests/http/test_deps.py lists them).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvloop
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide

from inprocess import get_caller
from keel.http.deps import SequentialDependencies

CONCURRENCY = 64


async def first() -> int:
    return 1


async def second() -> int:
    return 2


@get("/one")
async def one(first: NamedDependency[int]) -> str:
    return "OK"


@get("/two")
async def two(first: NamedDependency[int], second: NamedDependency[int]) -> str:
    return "OK"


def app(*, sequential: bool) -> Litestar:
    return Litestar(
        [one, two],
        dependencies={"first": Provide(first), "second": Provide(second)},
        plugins=[SequentialDependencies()] if sequential else [],
    )


async def measure(target: Any, path: str, requests: int) -> float:
    statuses: dict[int, int] = {}
    call = get_caller(target, path, [(b"host", b"127.0.0.1")], statuses)
    for _ in range(10):  # warm-up
        await asyncio.gather(*(call() for _ in range(CONCURRENCY)))
    statuses.clear()
    started = time.process_time()
    for _ in range(requests // CONCURRENCY):
        await asyncio.gather(*(call() for _ in range(CONCURRENCY)))
    cpu = time.process_time() - started
    assert set(statuses) == {200}, statuses
    return cpu / requests * 1e6


async def main(rounds: int, requests: int) -> None:
    plain, sequential = app(sequential=False), app(sequential=True)
    cases = {
        "one dependency": (plain, "/one"),
        "two, Litestar's task group": (plain, "/two"),
        "two, SequentialDependencies": (sequential, "/two"),
    }
    figures: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(rounds):
        for label, (target, path) in cases.items():
            figures[label].append(await measure(target, path, requests))
    for label, values in figures.items():
        rounds_text = " / ".join(f"{v:.1f}" for v in values)
        print(f"{label:32} {statistics.median(values):6.1f} µs per request  ({rounds_text})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=12800)
    arguments = parser.parse_args()
    uvloop.run(main(arguments.rounds, arguments.requests))
