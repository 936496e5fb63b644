from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from keel.ratelimit.gcra import GCRA, Decision, decisions, gcra_local
from keel.shared import Backends
from keel.shared.atomic import InProcessScriptRunner, LocalState, ScriptRunner
from tests.shared.conftest import OpenBackends

# "10/s burst 20"
INTERVAL_MS = 100
BURST = 20


def new_key() -> str:
    return f"test:gcra:{uuid.uuid4()}"


async def check(scripts: ScriptRunner, checks: Sequence[tuple[str, int, int]]) -> list[Decision]:
    """One script run for (key, interval_ms, burst) exact checks: one token each."""
    args = [value for _, interval, burst in checks for value in (interval, burst, 1)]
    return decisions(await scripts.run(GCRA, [key for key, _, _ in checks], args))


def textbook_gcra(tats: dict[str, int], key: str, interval: int, burst: int, now: int) -> list[int]:
    """GCRA as it is usually stated, one request at a time (keel's exact script before leases folded into it): admit
    unless the TAT would run more than `burst - 1` intervals ahead; the script's four integers."""
    tat = tats.get(key, now)
    new_tat = max(tat, now) + interval
    allow_at = new_tat - burst * interval
    if now < allow_at:
        return [0, 0, allow_at - now, tat - now]
    tats[key] = new_tat
    return [1, (now - allow_at) // interval, 0, new_tat - now]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_burst_passes_back_to_back_then_rejects(backends: Backends) -> None:
    key = new_key()

    # one call: every check sees the same instant, so the numbers are exact on Redis too
    results = await check(backends.scripts, [(key, INTERVAL_MS, BURST)] * (BURST + 1))

    assert [d.allowed for d in results] == [True] * BURST + [False]
    assert results[-1].retry_after == pytest.approx(0.1)


async def test_remaining_counts_down_and_reset_after_is_the_time_until_full(backends: Backends) -> None:
    key = new_key()

    results = await check(backends.scripts, [(key, INTERVAL_MS, BURST)] * (BURST + 1))

    assert [d.remaining for d in results] == [*range(BURST - 1, -1, -1), 0]
    assert [d.reset_after for d in results[:BURST]] == pytest.approx([0.1 * n for n in range(1, BURST + 1)])
    assert [d.retry_after for d in results[:BURST]] == [0.0] * BURST
    # a rejection leaves the bucket as it was: still full in 2 s
    assert results[-1].reset_after == pytest.approx(2.0)


async def test_separate_calls_share_one_bucket(backends: Backends) -> None:
    key = new_key()

    results = [(await check(backends.scripts, [(key, INTERVAL_MS, BURST)]))[0] for _ in range(BURST + 1)]

    assert [d.allowed for d in results] == [True] * BURST + [False]
    assert 0 < results[-1].retry_after <= 0.1


async def test_bucket_refills_after_the_interval(backends: Backends) -> None:
    key = new_key()
    assert [d.allowed for d in await check(backends.scripts, [(key, 50, 2)] * 3)] == [True, True, False]

    await asyncio.sleep(0.12)

    # two intervals passed: the bucket is full again, so two more pass
    again = await check(backends.scripts, [(key, 50, 2)] * 3)
    assert [(d.allowed, d.remaining) for d in again] == [(True, 1), (True, 0), (False, 0)]


async def test_bucket_refills_one_request_per_interval() -> None:
    clock = FakeClock()
    scripts = InProcessScriptRunner(clock=clock)
    key = new_key()
    assert [d.allowed for d in await check(scripts, [(key, INTERVAL_MS, BURST)] * 21)] == [True] * 20 + [False]

    clock.now += 0.1
    assert await check(scripts, [(key, INTERVAL_MS, BURST)] * 2) == [
        Decision(allowed=True, remaining=0, retry_after=0.0, reset_after=2.0),
        Decision(allowed=False, remaining=0, retry_after=0.1, reset_after=2.0),
    ]

    clock.now += 0.05
    [half_way] = await check(scripts, [(key, INTERVAL_MS, BURST)])
    assert half_way == Decision(allowed=False, remaining=0, retry_after=0.05, reset_after=1.95)

    clock.now += 1.95
    [full] = await check(scripts, [(key, INTERVAL_MS, BURST)])
    assert full == Decision(allowed=True, remaining=BURST - 1, retry_after=0.0, reset_after=0.1)


def test_a_bucket_expires_when_it_is_full_again() -> None:
    clock = FakeClock()
    state = LocalState(clock)
    gcra_local(state, ["k"] * 3, [INTERVAL_MS, BURST, 1] * 3, clock.now)

    assert state.ttl("k") == pytest.approx(0.3)  # idle clients cost no memory once their bucket is full
    clock.now += 0.3
    assert state.get("k") is None


async def test_redis_bucket_expires_when_it_is_full_again(
    redis_url: str, open_instance: OpenBackends, redis_admin: Redis
) -> None:
    key = new_key()
    await check((await open_instance(redis_url)).scripts, [(key, INTERVAL_MS, BURST)] * 3)

    assert 250 <= await redis_admin.pttl(f"keel:{key}") <= 300


async def test_keys_in_one_call_are_independent(backends: Backends) -> None:
    exhausted, fresh, slow = new_key(), new_key(), new_key()
    await check(backends.scripts, [(exhausted, INTERVAL_MS, 2)] * 2)

    results = await check(
        backends.scripts, [(exhausted, INTERVAL_MS, 2), (fresh, INTERVAL_MS, 2), (slow, 60_000, 5), (fresh, 100, 2)]
    )

    assert [(d.allowed, d.remaining) for d in results] == [(False, 0), (True, 1), (True, 4), (True, 0)]
    assert results[2].reset_after == pytest.approx(60.0)


async def test_lua_and_python_twins_agree(redis_url: str, open_instance: OpenBackends) -> None:
    runners = {"lua": (await open_instance(redis_url)).scripts, "python": InProcessScriptRunner()}
    keys = {name: new_key() for name in runners}
    # (pause before, checks): with 200 ms intervals every boundary is >= 50 ms from when the checks happen
    steps = [(0.0, 5), (0.5, 2), (0.25, 3)]

    seen: dict[str, list[Decision]] = {name: [] for name in runners}
    for pause, count in steps:
        await asyncio.sleep(pause)
        for _ in range(count):
            for name, runner in runners.items():  # interleaved, so both see (almost) the same times
                seen[name] += await check(runner, [(keys[name], 200, 3)])

    expected = [
        *[(True, 2), (True, 1), (True, 0), (False, 0), (False, 0)],  # burst 3, then 200 ms to wait
        *[(True, 1), (True, 0)],  # 500 ms later 2.5 intervals have refilled
        *[(True, 0), (False, 0), (False, 0)],  # 250 ms later 1.25
    ]
    for name in runners:
        assert [(d.allowed, d.remaining) for d in seen[name]] == expected, name
    for lua, python in zip(seen["lua"], seen["python"], strict=True):
        assert lua.retry_after == pytest.approx(python.retry_after, abs=0.02)
        assert lua.reset_after == pytest.approx(python.reset_after, abs=0.02)


def accepted_times(times_ms: Sequence[int], interval: int, burst: int) -> list[int]:
    """Drive the Python twin with a fake clock; the arrival times it admits."""
    clock = FakeClock()
    state = LocalState(clock)
    accepted = []
    for t in times_ms:
        clock.now = t / 1000
        [allowed, *_] = gcra_local(state, ["k"], [interval, burst, 1], clock.now)
        if allowed:
            accepted.append(t)
    return accepted


@settings(database=None, max_examples=300)
@given(
    times=st.lists(st.integers(0, 5_000), max_size=80).map(sorted),
    interval=st.integers(1, 300),
    burst=st.integers(1, 10),
)
def test_no_window_admits_more_than_burst_plus_rate(times: list[int], interval: int, burst: int) -> None:
    accepted = accepted_times(times, interval, burst)

    # the fullest windows start and end at accepted arrivals: n of them within w ms needs n <= burst + w / T
    for i, start in enumerate(accepted):
        for j in range(i, len(accepted)):
            assert (j - i + 1 - burst) * interval <= accepted[j] - start


@settings(database=None, max_examples=300)
@given(
    gaps=st.lists(st.integers(0, 500), max_size=60),
    start=st.integers(0, 10_000),
    interval=st.integers(1, 300),
    burst=st.integers(1, 10),
)
def test_traffic_within_the_rate_is_never_rejected(gaps: list[int], start: int, interval: int, burst: int) -> None:
    times = [start]
    for gap in gaps:
        times.append(times[-1] + interval + gap)

    assert accepted_times(times, interval, burst) == times


@settings(database=None, max_examples=300)
@given(
    traffic=st.lists(
        st.tuples(st.integers(0, 400), st.sampled_from("abc"), st.integers(1, 300), st.integers(1, 10)), max_size=80
    )
)
def test_one_token_is_the_textbook_gcra_over_random_traffic(traffic: list[tuple[int, str, int, int]]) -> None:
    clock = FakeClock()
    state = LocalState(clock)
    tats: dict[str, int] = {}
    now = 1_000_000
    for gap, key, interval, burst in traffic:
        now += gap
        clock.now = now / 1000
        assert gcra_local(state, [key], [interval, burst, 1], clock.now) == textbook_gcra(
            tats, key, interval, burst, now
        )


async def test_one_call_of_one_token_checks_is_the_textbook_gcra(backends: Backends) -> None:
    # fresh keys in one call: every check sees the same instant, so the integers are exact on Redis too
    rng = random.Random(16)
    keys = [new_key() for _ in range(3)]
    checks = [(rng.choice(keys), rng.randint(1, 300), rng.randint(1, 10)) for _ in range(200)]
    args = [value for _, interval, burst in checks for value in (interval, burst, 1)]

    flat = await backends.scripts.run(GCRA, [key for key, _, _ in checks], args)

    tats: dict[str, int] = {}
    assert flat == [n for key, interval, burst in checks for n in textbook_gcra(tats, key, interval, burst, 0)]
