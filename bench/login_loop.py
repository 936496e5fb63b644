"""What a login costs the event loop, in one process with no server: the request's own work against what waiting
for a real hash adds (issue 16, goal 5).

`taskset -c 0 .venv/bin/python bench/login_loop.py [--rounds 4] [--logins 480] [--concurrency 16]`

bench/login.py reads the server's threads: about 3 ms of event loop a login beside an 18 ms hash, where 0.9 of the
one-core ceiling leaves ~1.5 ms for everything that is not the hash. This splits the loop's share. keel's ASGI app
(`create_app`, the bench settings of bench/inprocess.py: SQLite, the limiter on and never tripping) is driven
directly, `--concurrency` logins at a time (16 is bench/login.py's c=16), and the main thread's CPU
(`time.thread_time`) per login is read in three variants, interleaved round by round:

- `argon2`: the real verify in keel's pool thread (nice 10), as served;
- `instant`: the verify answers at once, still through the pool thread: the request's own work (form, database,
  tokens, middleware) and the hop, with no hash between one login's steps and the next's;
- `instant + busy core`: as `instant`, with a nice-10 thread hashing without pause beside it: a hash running on
  the core, without the loop waiting for it.

Pin it to one CPU (taskset), as the server is in bench/login.py. Prints a markdown table of medians.

The engine's SQLite pool is given room for every login of a batch (POOL): SQLAlchemy's default for SQLite keeps 5
connections and closes the overflow on return, and batches of 16 started together then opened ~0.65 aiosqlite
connections (a thread each) a login, which the served bench does not (10 thread starts in 6 s of logins at c=16,
strace), so the figures read 0.15-0.25 ms high (BENCHMARKS.md, 2026-12-06).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvloop

from inprocess import bench_settings, call, migrated_sqlite_url
from run import BENCH_USER, FORM_TYPE, login_form

VARIANTS = ("argon2", "instant", "instant + busy core")
POOL = 64  # SQLite connections the bench's engine keeps: more than any --concurrency it is run at


def roomy_sqlite_pool() -> None:
    """keel.db's SQLite engine with a pool that keeps POOL connections (a bench's patch, never keel's code)."""
    from sqlalchemy.ext.asyncio import create_async_engine as create

    from keel import db

    def create_async_engine(url: str, **options: Any) -> Any:
        if url.startswith("sqlite"):
            options.update(pool_size=POOL, max_overflow=0)
        return create(url, **options)

    setattr(db, "create_async_engine", create_async_engine)  # noqa: B010  # an attribute keel.db does not export


@contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """A nice-10 thread hashing without pause (keel's Argon2 parameters) while the block runs."""
    if not enabled:
        yield
        return
    import argon2

    from keel.accounts.passwords import HASH_THREAD_NICENESS, OWASP_MIN_MEMORY_COST, OWASP_MIN_TIME_COST

    hasher = argon2.PasswordHasher(time_cost=OWASP_MIN_TIME_COST, memory_cost=OWASP_MIN_MEMORY_COST, parallelism=1)
    stop = threading.Event()

    def spin() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)
        while not stop.is_set():
            hasher.hash(b"busy")

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


async def measure(rounds: int, logins: int, concurrency: int, default_pool: bool) -> dict[str, list[float]]:
    from keel.accounts import passwords
    from keel.logs import configure_logging
    from keel.main import create_app

    if not default_pool:
        roomy_sqlite_pool()
    settings = bench_settings(await migrated_sqlite_url("keel-login-loop-"), KEEL_LOG_LEVEL="warning")
    configure_logging(settings.log_format, "warning")
    app = create_app(settings)
    form, kind = login_form().encode(), FORM_TYPE.encode()
    real = passwords.PasswordHasher._verify_sync

    def instant(self: Any, password_hash: str | None, secret: bytes) -> passwords.Verification:
        return passwords.Verification(ok=True, new_hash=None)

    async def block() -> float:
        cpu = time.thread_time()
        for _ in range(logins // concurrency):
            answers = await asyncio.gather(
                *(call(app, "POST", "/api/v1/auth/token", form, kind) for _ in range(concurrency))
            )
            assert all(status == 200 for status, _ in answers), answers[0]
        return (time.thread_time() - cpu) / logins * 1e6

    figures: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    async with app.lifespan():
        created, _ = await call(app, "POST", "/api/v1/users", json.dumps(BENCH_USER).encode(), b"application/json")
        assert created == 201, created
        await block()  # warm-up: the statement caches, the pool thread, the dummy hash
        gc.collect()
        gc.freeze()
        for number in range(rounds):
            order = VARIANTS[number % 3 :] + VARIANTS[: number % 3]
            for variant in order:
                hasher = passwords.PasswordHasher
                hasher._verify_sync = real if variant == "argon2" else instant  # type: ignore[method-assign]
                with busy_core(variant.endswith("busy core")):
                    figures[variant].append(await block())
        passwords.PasswordHasher._verify_sync = real  # type: ignore[method-assign]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--logins", type=int, default=480)
    parser.add_argument("--concurrency", type=int, default=16, help=f"at most POOL ({POOL})")
    parser.add_argument("--default-pool", action="store_true", help="SQLAlchemy's SQLite pool, as before 2026-12-06")
    args = parser.parse_args()
    figures = uvloop.run(measure(args.rounds, args.logins, args.concurrency, args.default_pool))
    print(f"{args.logins} logins a block, {args.concurrency} at a time, {args.rounds} rounds; load {os.getloadavg()}\n")
    print("| variant | event-loop CPU µs / login (median) | rounds |\n|---|---:|---|")
    for variant, values in figures.items():
        print(f"| {variant} | {statistics.median(values):,.0f} | {' / '.join(f'{v:,.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
