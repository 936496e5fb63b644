from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from keel.shared import Backends, BackendUnavailable
from keel.shared.expiring import ExpiringDict
from tests.shared.conftest import DEAD_REDIS_URL, OpenBackends


def new_key() -> str:
    return f"test:{uuid.uuid4()}"


async def test_set_then_get_returns_the_latest_value(backends: Backends) -> None:
    key = new_key()
    assert await backends.kv.get(key) is None

    await backends.kv.set(key, b"first", ttl=30)
    await backends.kv.set(key, b"\x00second", ttl=30)

    assert await backends.kv.get(key) == b"\x00second"
    assert await backends.kv.get(new_key()) is None


async def test_value_expires_after_its_ttl(backends: Backends) -> None:
    short, long = new_key(), new_key()
    await backends.kv.set(short, b"short", ttl=0.2)
    await backends.kv.set(long, b"long", ttl=30)
    assert await backends.kv.get(short) == b"short"

    await asyncio.sleep(0.3)

    assert await backends.kv.get(short) is None
    assert await backends.kv.take(short) is None
    assert await backends.kv.get(long) == b"long"


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
async def test_set_rejects_a_ttl_that_is_not_positive(backends: Backends, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await backends.kv.set(new_key(), b"value", ttl=ttl)


async def test_take_is_single_use_under_concurrent_takers(backends: Backends) -> None:
    key = new_key()
    await backends.kv.set(key, b"ticket", ttl=30)

    results = await asyncio.gather(*(backends.kv.take(key) for _ in range(50)))

    assert sorted(results, key=lambda result: result is None) == [b"ticket"] + [None] * 49
    assert await backends.kv.get(key) is None


async def test_delete_removes_only_the_given_keys(backends: Backends) -> None:
    gone, also_gone, kept = new_key(), new_key(), new_key()
    for key in (gone, also_gone, kept):
        await backends.kv.set(key, b"value", ttl=30)

    await backends.kv.delete(gone, also_gone, new_key())  # an absent key is ignored
    await backends.kv.delete()

    assert await backends.kv.get(gone) is None
    assert await backends.kv.get(also_gone) is None
    assert await backends.kv.get(kept) == b"value"


async def test_redis_store_namespaces_keys_and_sets_the_ttl_in_redis(
    redis_url: str, open_instance: OpenBackends, redis_admin: Redis
) -> None:
    backends = await open_instance(redis_url)
    key = new_key()

    await backends.kv.set(key, b"value", ttl=10)

    assert await redis_admin.get(f"keel:{key}") == b"value"
    assert 9_000 < await redis_admin.pttl(f"keel:{key}") <= 10_000


async def test_redis_store_raises_backend_unavailable_when_redis_is_down(open_instance: OpenBackends) -> None:
    backends = await open_instance(DEAD_REDIS_URL)

    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: backends.kv.get("k"),
        lambda: backends.kv.set("k", b"v", ttl=1),
        lambda: backends.kv.take("k"),
        lambda: backends.kv.delete("k"),
    ]
    for operation in operations:
        with pytest.raises(BackendUnavailable):
            await operation()


def test_expired_entries_do_not_accumulate() -> None:
    now = [0.0]
    items: ExpiringDict[bytes] = ExpiringDict(lambda: now[0], min_sweep=100)

    for round_ in range(50):  # 50 rounds of 1 000 short-lived keys that are never read again
        for i in range(1_000):
            items.set(f"{round_}:{i}", b"v", ttl=1)
        now[0] += 2

    assert len(items) <= 2_000  # the live round and at most one round awaiting the next sweep
    items.set("fresh", b"v", ttl=1)
    assert items.get("fresh") == b"v"
    assert items.get("49:0") is None
