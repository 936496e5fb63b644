"""The read cache on both backends: versioned entries, the stale-fill race, instances, expiry and outages."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest
from redis.asyncio import Redis

from keel.shared import Backends, BackendUnavailable
from keel.shared import errors as errors_module
from keel.shared.cache import InProcessReadCache, ReadCache, RedisReadCache
from tests.servers import RedisProcess
from tests.shared.conftest import DEAD_REDIS_URL, OpenBackends


def new_scope() -> str:
    return f"test:{uuid.uuid4()}"


async def fill(cache: ReadCache, scope: str, key: str, value: bytes) -> None:
    lookup = await cache.get(scope, key)
    await cache.put(scope, key, value, lookup.version)


async def test_an_entry_is_served_until_its_scope_is_invalidated(backends: Backends) -> None:
    scope = new_scope()
    assert (await backends.cache.get(scope, "page")).value is None

    await fill(backends.cache, scope, "page", b'"etag"|{"with": "bars|"}')
    assert (await backends.cache.get(scope, "page")).value == b'"etag"|{"with": "bars|"}'

    await backends.cache.invalidate(scope)
    assert (await backends.cache.get(scope, "page")).value is None
    await fill(backends.cache, scope, "page", b"new")
    assert (await backends.cache.get(scope, "page")).value == b"new"


async def test_invalidation_hides_only_its_own_scopes(backends: Backends) -> None:
    written, other, untouched = new_scope(), new_scope(), new_scope()
    for scope in (written, other, untouched):
        await fill(backends.cache, scope, "k", scope.encode())

    await backends.cache.invalidate(written, other)

    assert (await backends.cache.get(written, "k")).value is None
    assert (await backends.cache.get(other, "k")).value is None
    assert (await backends.cache.get(untouched, "k")).value == untouched.encode()


async def test_a_fill_that_raced_a_write_is_never_served(backends: Backends) -> None:
    scope = new_scope()
    reader = await backends.cache.get(scope, "page")  # a reader looks up, misses, starts reading the database
    await backends.cache.invalidate(scope)  # meanwhile a write commits
    await backends.cache.put(scope, "page", b"read before the write", reader.version)  # the reader fills late

    assert (await backends.cache.get(scope, "page")).value is None


async def test_an_invalidation_on_one_instance_hides_the_entry_on_every_instance(
    redis_url: str, open_instance: OpenBackends
) -> None:
    first, second = await open_instance(redis_url), await open_instance(redis_url)
    scope = new_scope()
    await fill(first.cache, scope, "page", b"shared")
    assert (await second.cache.get(scope, "page")).value == b"shared"

    await second.cache.invalidate(scope)

    assert (await first.cache.get(scope, "page")).value is None


@pytest.mark.parametrize("shape", ["embedded", "scaled"])
async def test_entries_expire_after_the_ttl(shape: str, request: pytest.FixtureRequest) -> None:
    redis = Redis.from_url(request.getfixturevalue("redis_url")) if shape == "scaled" else None
    cache: ReadCache = RedisReadCache(redis, ttl=0.2) if redis is not None else InProcessReadCache(ttl=0.2)
    scope = new_scope()
    await fill(cache, scope, "page", b"brief")
    assert (await cache.get(scope, "page")).value == b"brief"

    await asyncio.sleep(0.3)

    assert (await cache.get(scope, "page")).value is None
    if redis is not None:
        await redis.aclose()


async def test_redis_down_makes_reads_raise_and_invalidations_wait(open_instance: OpenBackends) -> None:
    backends = await open_instance(DEAD_REDIS_URL)

    await backends.cache.invalidate(new_scope())  # the write committed: its invalidation must not fail it
    with pytest.raises(BackendUnavailable):
        await backends.cache.get(new_scope(), "page")
    with pytest.raises(BackendUnavailable):
        await backends.cache.put(new_scope(), "page", b"value", b"")


@pytest.mark.parametrize("recovery", ["the writer reads", "the feed resumes"])
async def test_an_invalidation_lost_to_an_outage_is_made_when_redis_answers_again(
    open_instance: OpenBackends, recovery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors_module, "BREAKER_SECONDS", 0.0)  # the breaker has its own test
    with RedisProcess() as redis_server:
        writer, reader = await open_instance(redis_server.url), await open_instance(redis_server.url)
        await writer.broker.subscribe(new_scope(), lambda data: None)  # a live feed, to hear when it resumes
        resumed = asyncio.Event()
        writer.broker.on_resume(resumed.set)
        scope = new_scope()
        await fill(reader.cache, scope, "page", b"before the write")
        admin = Redis.from_url(redis_server.url)
        try:
            # writes hang past the client's timeout and its one retry: the writer's invalidation cannot go out
            await admin.client_pause(5000, all=False)  # WRITE mode: reads go on
            await writer.cache.invalidate(scope)
            assert (await reader.cache.get(scope, "page")).value == b"before the write"  # not made yet
            await admin.client_unpause()

            if recovery == "the writer reads":  # an instance reads its own writes back, first of all
                assert (await writer.cache.get(scope, "page")).value is None
            else:
                await admin.client_kill_filter(_type="pubsub")  # the writer's feed drops and resumes
                async with asyncio.timeout(5):
                    await resumed.wait()
                for _ in range(100):  # the writer's retry runs as a task of its own, soon after the resume
                    if (await reader.cache.get(scope, "page")).value is None:
                        break
                    await asyncio.sleep(0.02)
            assert (await reader.cache.get(scope, "page")).value is None
        finally:
            await admin.aclose()


async def test_after_a_failed_call_the_cache_leaves_redis_alone_for_a_moment(
    open_instance: OpenBackends,
) -> None:
    with RedisProcess() as redis_server:
        backends = await open_instance(redis_server.url)
        await fill(backends.cache, new_scope(), "page", b"works")
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # a dead link: no refusal, no reply, only timeouts
        try:
            with pytest.raises(BackendUnavailable):
                await backends.cache.get(new_scope(), "page")  # waits out the client's timeout
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await backends.cache.get(new_scope(), "page")
            await backends.cache.invalidate(new_scope())
            assert time.monotonic() - started < 0.1  # neither waited on Redis
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(errors_module.BREAKER_SECONDS)
        await fill(backends.cache, new_scope(), "page", b"works again")
