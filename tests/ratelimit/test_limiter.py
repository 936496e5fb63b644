from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from keel.ratelimit.gcra import Decision
from keel.ratelimit.limiter import MAX_BATCH, Limiter
from keel.settings import RatePolicy
from keel.shared import Backends, BackendUnavailable
from keel.shared.atomic import Arg, AtomicScript, InProcessScriptRunner, ScriptRunner
from tests.conftest import IN_CI
from tests.servers import RedisProcess
from tests.shared.conftest import DEAD_REDIS_URL, OpenBackends

POLICY = RatePolicy(limit=10, period=1, burst=20)  # "10/s burst 20"
SLOW = RatePolicy(limit=1, period=60, burst=2)  # nothing refills during a test


def new_key() -> str:
    return f"test:{uuid.uuid4()}"


def new_policy_name() -> str:
    """A policy name of its own, so this test's counter samples are its own."""
    return f"test-{uuid.uuid4().hex[:12]}"


def rate_limited(policy_name: str) -> float:
    return REGISTRY.get_sample_value("keel_rate_limited_total", {"policy": policy_name}) or 0.0


def limiter_errors() -> float:
    return REGISTRY.get_sample_value("keel_rate_limiter_errors_total") or 0.0


class WatchedRunner:
    """Wraps a runner: records the keys of every run, and fails with BackendUnavailable while `is_down`."""

    def __init__(self, inner: ScriptRunner) -> None:
        self.inner = inner
        self.runs: list[Sequence[str]] = []
        self.is_down = False

    async def run(self, script: AtomicScript, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        self.runs.append(keys)
        await asyncio.sleep(0.001)  # like a round trip: other checks run meanwhile
        if self.is_down:
            raise BackendUnavailable("down for the test")
        return await self.inner.run(script, keys, args)


@pytest.fixture(params=[True, False], ids=["batch", "direct"])
def batch(request: pytest.FixtureRequest) -> bool:
    is_batch: bool = request.param
    return is_batch


@pytest.fixture
def ratelimit_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="keel.ratelimit"):
        yield caplog


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "keel.ratelimit" and r.levelno == level]


async def test_concurrent_checks_of_one_key_admit_exactly_the_burst(backends: Backends, batch: bool) -> None:
    limiter = Limiter(backends.scripts, batch=batch)
    key = new_key()

    results = await asyncio.gather(*(limiter.check(key, POLICY, "default") for _ in range(50)))

    assert sum(d.allowed for d in results) == POLICY.burst
    assert sorted(d.remaining for d in results if d.allowed) == list(range(POLICY.burst))
    assert all(0 < d.retry_after <= 0.1 for d in results if not d.allowed)


async def test_one_tick_of_checks_goes_as_one_script_run(backends: Backends) -> None:
    runner = WatchedRunner(backends.scripts)
    limiter = Limiter(runner, batch=True)
    shared, own = new_key(), [new_key() for _ in range(20)]

    results = await asyncio.gather(
        *(limiter.check(shared, POLICY, "default") for _ in range(30)),
        *(limiter.check(key, SLOW, "default") for key in own),
    )

    assert len(runner.runs) == 1
    assert len(runner.runs[0]) == 50
    # each caller gets the answer for its own check
    assert sum(d.allowed for d in results[:30]) == POLICY.burst
    assert results[30:] == [Decision(allowed=True, remaining=1, retry_after=0.0, reset_after=60.0)] * 20


async def test_a_batch_is_capped(backends: Backends) -> None:
    runner = WatchedRunner(backends.scripts)
    limiter = Limiter(runner, batch=True)
    count = 2 * MAX_BATCH + 10

    results = await asyncio.gather(*(limiter.check(new_key(), POLICY, "default") for _ in range(count)))

    assert [len(keys) for keys in runner.runs] == [MAX_BATCH, MAX_BATCH, 10]
    assert all(d.allowed and d.remaining == POLICY.burst - 1 for d in results)


async def test_checks_after_a_batch_left_form_the_next_one(backends: Backends) -> None:
    runner = WatchedRunner(backends.scripts)
    limiter = Limiter(runner, batch=True)
    key = new_key()

    first = await limiter.check(key, SLOW, "default")
    second = await asyncio.gather(*(limiter.check(key, SLOW, "default") for _ in range(2)))

    assert [len(keys) for keys in runner.runs] == [1, 2]
    assert (first.remaining, [d.allowed for d in second]) == (1, [True, False])


async def test_unbatched_checks_run_one_by_one(backends: Backends) -> None:
    runner = WatchedRunner(backends.scripts)
    limiter = Limiter(runner, batch=False)

    await asyncio.gather(*(limiter.check(new_key(), POLICY, "default") for _ in range(5)))

    assert [len(keys) for keys in runner.runs] == [1] * 5


async def test_a_cancelled_caller_does_not_disturb_its_batch(backends: Backends) -> None:
    limiter = Limiter(backends.scripts, batch=True)
    key = new_key()
    doomed = asyncio.ensure_future(limiter.check(key, SLOW, "default"))
    others = asyncio.gather(*(limiter.check(key, SLOW, "default") for _ in range(2)))
    await asyncio.sleep(0)  # all three have joined the batch

    doomed.cancel()

    # the cancelled check still counted: it had been sent
    assert [d.allowed for d in await others] == [True, False]


async def test_a_script_error_reaches_every_caller_of_its_batch() -> None:
    broken = AtomicScript(lua="", local=lambda state, keys, args, now: [1 // 0])

    class BrokenRunner:
        async def run(self, script: AtomicScript, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
            return await InProcessScriptRunner().run(broken, keys, args)

    limiter = Limiter(BrokenRunner(), batch=True)

    results = await asyncio.gather(
        *(limiter.check(new_key(), POLICY, "default") for _ in range(3)), return_exceptions=True
    )

    assert [type(r) for r in results] == [ZeroDivisionError] * 3


async def test_keys_are_namespaced_by_policy(backends: Backends) -> None:
    limiter = Limiter(backends.scripts, batch=True)
    key = new_key()

    assert [(await limiter.check(key, SLOW, "default")).remaining for _ in range(2)] == [1, 0]

    assert (await limiter.check(key, SLOW, "auth")).remaining == 1


async def test_redis_keys_are_named_for_the_policy(
    redis_url: str, open_instance: OpenBackends, redis_admin: Redis
) -> None:
    limiter = Limiter((await open_instance(redis_url)).scripts, batch=True)
    key = new_key()

    await limiter.check(key, SLOW, "auth")

    assert 59_000 < await redis_admin.pttl(f"keel:rl:auth:{key}") <= 60_000


async def test_rejections_are_counted_per_policy(backends: Backends, batch: bool) -> None:
    limiter = Limiter(backends.scripts, batch=batch)
    name, other = new_policy_name(), new_policy_name()
    key = new_key()

    for _ in range(SLOW.burst + 3):
        await limiter.check(key, SLOW, name)
    await limiter.check(key, SLOW, other)

    assert rate_limited(name) == 3
    assert rate_limited(other) == 0


async def test_an_unreachable_redis_fails_open_fast_and_logs_once(
    open_instance: OpenBackends, batch: bool, ratelimit_logs: pytest.LogCaptureFixture
) -> None:
    limiter = Limiter((await open_instance(DEAD_REDIS_URL)).scripts, batch=batch, breaker_seconds=0.05)
    name = new_policy_name()
    errors_before = limiter_errors()

    durations, results = [], []
    for _ in range(10):
        started = time.perf_counter()
        results.append(await limiter.check(new_key(), SLOW, name))
        durations.append(time.perf_counter() - started)
    await asyncio.sleep(0.06)  # the breaker lets one check try again
    results += await asyncio.gather(*(limiter.check(new_key(), SLOW, name) for _ in range(20)))

    assert results == [Decision(allowed=True, remaining=SLOW.burst - 1, retry_after=0.0, reset_after=0.0)] * 30
    assert limiter_errors() - errors_before == 30
    assert rate_limited(name) == 0
    assert len(messages(ratelimit_logs, logging.WARNING)) == 1
    assert durations[0] < 0.5  # the one attempt: the connection is refused at once
    assert max(durations[1:]) < 0.005  # the breaker is open: nobody waits on Redis


async def test_the_breaker_lets_one_probe_through_per_window(batch: bool) -> None:
    runner = WatchedRunner(InProcessScriptRunner())
    limiter = Limiter(runner, batch=batch, breaker_seconds=0.05)
    runner.is_down = True
    await limiter.check(new_key(), POLICY, "default")
    assert len(runner.runs) == 1

    await asyncio.gather(*(limiter.check(new_key(), POLICY, "default") for _ in range(10)))
    assert len(runner.runs) == 1  # within the window nothing touches the backend

    await asyncio.sleep(0.06)
    await asyncio.gather(*(limiter.check(new_key(), POLICY, "default") for _ in range(10)))
    assert len(runner.runs) == 2  # one probe; the others did not wait for it


async def test_limiting_resumes_when_the_backend_is_back(batch: bool, ratelimit_logs: pytest.LogCaptureFixture) -> None:
    runner = WatchedRunner(InProcessScriptRunner())
    limiter = Limiter(runner, batch=batch, breaker_seconds=0.05)
    key = new_key()
    runner.is_down = True
    for _ in range(5):
        assert (await limiter.check(key, SLOW, "default")).allowed

    runner.is_down = False
    await asyncio.sleep(0.06)

    assert [(await limiter.check(key, SLOW, "default")).allowed for _ in range(3)] == [True, True, False]
    assert len(messages(ratelimit_logs, logging.WARNING)) == 1
    assert messages(ratelimit_logs, logging.INFO) == ["rate limiter backend reachable again, limiting resumed"]


async def test_a_cancelled_probe_does_not_keep_the_breaker_open(batch: bool) -> None:
    runner = WatchedRunner(InProcessScriptRunner())
    limiter = Limiter(runner, batch=batch, breaker_seconds=0.05)
    runner.is_down = True
    await limiter.check(new_key(), POLICY, "default")
    await asyncio.sleep(0.06)
    probe = asyncio.ensure_future(limiter.check(new_key(), POLICY, "default"))
    await asyncio.sleep(0)  # the probe is on its way to the backend
    probe.cancel()
    runner.is_down = False
    await asyncio.sleep(0.01)

    key = new_key()
    assert [(await limiter.check(key, SLOW, "default")).allowed for _ in range(3)] == [True, True, False]


async def test_outages_are_logged_at_most_once_per_interval(ratelimit_logs: pytest.LogCaptureFixture) -> None:
    runner = WatchedRunner(InProcessScriptRunner())
    limiter = Limiter(runner, batch=False, breaker_seconds=0.0, log_interval=0.1)

    for is_down in (True, False, True, False):  # a second outage within the interval
        runner.is_down = is_down
        await limiter.check(new_key(), POLICY, "default")
    await asyncio.sleep(0.1)
    for is_down in (True, False):  # one after it
        runner.is_down = is_down
        await limiter.check(new_key(), POLICY, "default")

    assert len(messages(ratelimit_logs, logging.WARNING)) == 2
    assert len(messages(ratelimit_logs, logging.INFO)) == 2


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A private redis-server this test may stop and start."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; CI=true requires it", pytrace=False)
        pytest.skip("redis-server is not installed")
    with RedisProcess() as server:
        yield server


async def test_limiting_resumes_by_itself_when_redis_returns(
    redis_process: RedisProcess, open_instance: OpenBackends, batch: bool, ratelimit_logs: pytest.LogCaptureFixture
) -> None:
    limiter = Limiter((await open_instance(redis_process.url)).scripts, batch=batch, breaker_seconds=0.2)
    key = new_key()
    assert [(await limiter.check(key, SLOW, "default")).allowed for _ in range(3)] == [True, True, False]

    redis_process.stop()
    errors_before = limiter_errors()
    assert all([(await limiter.check(key, SLOW, "default")).allowed for _ in range(5)])
    assert limiter_errors() - errors_before == 5

    redis_process.start()  # empty: the restarted server remembers neither the buckets nor the script
    await asyncio.sleep(0.25)

    assert [(await limiter.check(key, SLOW, "default")).allowed for _ in range(3)] == [True, True, False]
    assert len(messages(ratelimit_logs, logging.WARNING)) == 1
    assert len(messages(ratelimit_logs, logging.INFO)) == 1
