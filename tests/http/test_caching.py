"""Cached conditional reads: concurrent misses of one entry share one load (keel.http.caching.Loads)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel.http.caching import Loads, Reads
from keel.shared.cache import InProcessReadCache


class SlowLoads:
    """A load that counts its runs and finishes when the test says so."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self, session: AsyncSession) -> dict[str, Any]:
        self.runs += 1
        await self.release.wait()
        return {"run": self.runs}


@contextlib.asynccontextmanager
async def no_session() -> AsyncIterator[AsyncSession]:
    yield cast("AsyncSession", None)


def reads(cache: InProcessReadCache, loads: Loads) -> Reads:
    return Reads(cache, None, cast("async_sessionmaker[AsyncSession]", no_session), loads)


async def test_concurrent_misses_of_one_entry_run_one_load_and_fill_the_cache_once() -> None:
    # the hot entry's expiry: every request in flight misses at once (a 10 s TTL on a page 64 clients read)
    cache, loads, load = InProcessReadCache(), Loads(), SlowLoads()
    requests = [asyncio.create_task(reads(cache, loads).json(load, scope="s", key="k")) for _ in range(64)]
    await asyncio.sleep(0)
    load.release.set()
    responses = await asyncio.gather(*requests)

    assert load.runs == 1
    assert {r.content for r in responses} == {b'{"run":1}'}
    assert len({r.headers["etag"] for r in responses}) == 1
    assert (await cache.get("s", "k")).value is not None
    again = await reads(cache, loads).json(load, scope="s", key="k")  # a hit
    assert (load.runs, again.content) == (1, b'{"run":1}')


async def test_a_miss_after_a_write_does_not_share_the_load_that_started_before_it() -> None:
    cache, loads, load = InProcessReadCache(), Loads(), SlowLoads()
    first = asyncio.create_task(reads(cache, loads).json(load, scope="s", key="k"))
    await asyncio.sleep(0)
    await cache.invalidate("s")  # a write committed while the first load runs
    second = asyncio.create_task(reads(cache, loads).json(load, scope="s", key="k"))
    await asyncio.sleep(0)
    load.release.set()
    await asyncio.gather(first, second)
    assert load.runs == 2


async def test_a_cancelled_waiter_leaves_the_shared_load_to_the_others() -> None:
    cache, loads, load = InProcessReadCache(), Loads(), SlowLoads()
    leader = asyncio.create_task(reads(cache, loads).json(load, scope="s", key="k"))
    other = asyncio.create_task(reads(cache, loads).json(load, scope="s", key="k"))
    await asyncio.sleep(0)
    leader.cancel()  # the client that started the load went away
    with pytest.raises(asyncio.CancelledError):
        await leader
    load.release.set()
    assert (await other).content == b'{"run":1}'
    assert load.runs == 1


async def test_a_failed_load_fails_its_waiters_and_the_next_miss_loads_again() -> None:
    cache, loads = InProcessReadCache(), Loads()
    runs = 0

    async def failing(session: AsyncSession) -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        raise RuntimeError("database gone")

    results = await asyncio.gather(
        *(reads(cache, loads).json(failing, scope="s", key="k") for _ in range(3)), return_exceptions=True
    )
    assert runs == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await reads(cache, loads).json(failing, scope="s", key="k")
    assert runs == 2
