from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from redis.asyncio import Redis

from keel.shared import Backends
from keel.shared.atomic import Arg, AtomicScript, LocalState
from tests.shared.conftest import OpenBackends


def new_key() -> str:
    return f"test:{uuid.uuid4()}"


def capped_increment(state: LocalState, keys: Sequence[str], args: Sequence[Arg], now: float) -> list[int]:
    cap, ttl = int(args[0]), float(args[1])
    current = state.get(keys[0])
    count = 0 if current is None else int(current)
    if count >= cap:
        return [0, count]
    count += 1
    # like INCR, later increments keep the TTL the first one set
    state.set(keys[0], count, ttl if count == 1 else state.ttl(keys[0]))
    return [1, count]


# KEYS[1]: the counter; ARGV: cap, ttl in seconds. Returns {incremented (0/1), count}.
CAPPED_INCREMENT = AtomicScript(
    lua="""
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then
  return {0, count}
end
count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
end
return {1, count}
""",
    local=capped_increment,
)


def elapsed_ms(state: LocalState, keys: Sequence[str], args: Sequence[Arg], now: float) -> list[int]:
    started = state.get(keys[0])
    if started is None:
        state.set(keys[0], now, 60)
        return [0]
    return [int((now - float(started)) * 1000)]


# KEYS[1]: a start time; the first call records the server's time, later ones return ms since then.
ELAPSED_MS = AtomicScript(
    lua="""
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local started = redis.call('GET', KEYS[1])
if not started then
  redis.call('SET', KEYS[1], string.format('%.6f', now), 'EX', 60)
  return {0}
end
return {math.floor((now - tonumber(started)) * 1000)}
""",
    local=elapsed_ms,
)


async def test_both_runners_give_the_same_results(backends: Backends) -> None:
    key = new_key()

    results = [await backends.scripts.run(CAPPED_INCREMENT, [key], [3, 30]) for _ in range(5)]

    assert results == [[1, 1], [1, 2], [1, 3], [0, 3], [0, 3]]
    # another key is another counter
    assert await backends.scripts.run(CAPPED_INCREMENT, [new_key()], [3, 30]) == [1, 1]


async def test_concurrent_runs_lose_no_update(backends: Backends) -> None:
    key = new_key()

    results = await asyncio.gather(*(backends.scripts.run(CAPPED_INCREMENT, [key], [1_000, 30]) for _ in range(100)))

    assert sorted(count for _, count in results) == list(range(1, 101))
    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [100, 30]) == [0, 100]


async def test_state_resets_when_its_ttl_expires(backends: Backends) -> None:
    key = new_key()
    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [2, 0.2]) == [1, 1]
    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [2, 0.2]) == [1, 2]
    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [2, 0.2]) == [0, 2]

    await asyncio.sleep(0.3)

    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [2, 0.2]) == [1, 1]


async def test_scripts_measure_time_in_seconds(backends: Backends) -> None:
    key = new_key()
    assert await backends.scripts.run(ELAPSED_MS, [key], []) == [0]

    await asyncio.sleep(0.15)

    [elapsed] = await backends.scripts.run(ELAPSED_MS, [key], [])
    assert 140 <= elapsed < 1_000


async def test_redis_runner_reloads_a_script_the_server_forgot(
    redis_url: str, open_instance: OpenBackends, redis_admin: Redis
) -> None:
    backends = await open_instance(redis_url)
    key = new_key()
    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [5, 30]) == [1, 1]

    await redis_admin.script_flush()

    assert await backends.scripts.run(CAPPED_INCREMENT, [key], [5, 30]) == [1, 2]
    assert await redis_admin.get(f"keel:{key}") == b"2"  # keys are namespaced like the store's
