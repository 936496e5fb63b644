"""Password hashing against real argon2: the PHC format, rehash on login, and the bounded pool's behaviour."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import argon2
import pytest

from keel.accounts.errors import PasswordPoolBusy
from keel.accounts.passwords import HASH_THREAD_NICENESS, Argon2Settings, PasswordHasher

# ~5x the default cost (about 120 ms here): long enough that timing assertions hold on a noisy VM
SLOW = Argon2Settings(time_cost=10)
DEFAULT = Argon2Settings()


class MakeHasher(Protocol):
    def __call__(
        self,
        settings: Argon2Settings = ...,
        *,
        cls: type[PasswordHasher] = ...,
        workers: int | None = ...,
        max_waiting: int = ...,
        max_wait: float = ...,
    ) -> PasswordHasher: ...


class CountingHasher(PasswordHasher):
    """Records, from inside the pool threads, how many hashes run at once; `gate` holds them until it opens."""

    def __init__(
        self, settings: Argon2Settings, *, workers: int | None = None, max_waiting: int = 64, max_wait: float = 3.0
    ) -> None:
        super().__init__(settings, workers=workers, max_waiting=max_waiting, max_wait=max_wait)
        self.active = 0
        self.peak = 0
        self.gate = threading.Event()
        self.gate.set()
        self._count_lock = threading.Lock()

    def _hash_sync(self, secret: bytes) -> str:
        with self._count_lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self.gate.wait()
            return super()._hash_sync(secret)
        finally:
            with self._count_lock:
                self.active -= 1

    def close(self) -> None:
        self.gate.set()  # a failed test must not leave pool threads (and close()) blocked
        super().close()


@pytest.fixture
def make_hasher() -> Iterator[MakeHasher]:
    """Builds hashers for this test's loop (their semaphore binds to it) and closes them all afterwards."""
    hashers: list[PasswordHasher] = []

    def make(
        settings: Argon2Settings = DEFAULT,
        *,
        cls: type[PasswordHasher] = PasswordHasher,
        workers: int | None = None,
        max_waiting: int = 64,
        max_wait: float = 3.0,
    ) -> PasswordHasher:
        hasher = cls(settings, workers=workers, max_waiting=max_waiting, max_wait=max_wait)
        hashers.append(hasher)
        return hasher

    yield make
    for hasher in hashers:
        hasher.close()


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    hasher = PasswordHasher()
    yield hasher
    hasher.close()


async def timed(awaitable: Awaitable[object]) -> float:
    start = time.perf_counter()
    await awaitable
    return time.perf_counter() - start


async def wait_until(condition: Callable[[], bool]) -> None:
    # the state lives in pool threads, so the loop has nothing to await but time
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


# -- format and correctness ------------------------------------------------------------------------------


async def test_hash_is_argon2id_phc_string_with_owasp_parameters(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse battery")

    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    params = argon2.extract_parameters(encoded)
    assert params.type is argon2.Type.ID
    assert (params.memory_cost, params.time_cost, params.parallelism) == (19456, 2, 1)
    assert params.memory_cost >= 19 * 1024
    assert params.time_cost >= 2
    assert params.parallelism == 1
    assert (params.salt_len, params.hash_len) == (16, 32)


async def test_verify_accepts_the_right_password_only(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse battery")

    assert await hasher.verify(encoded, "correct horse battery") == (True, None)
    assert await hasher.verify(encoded, "correct horse batterY") == (False, None)
    assert await hasher.verify(encoded, "") == (False, None)


async def test_same_password_hashes_differently(hasher: PasswordHasher) -> None:
    first, second = await asyncio.gather(hasher.hash("same password"), hasher.hash("same password"))
    assert first != second


async def test_lone_surrogate_password_round_trips(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("pass\ud800word")
    assert (await hasher.verify(encoded, "pass\ud800word")).ok
    assert not (await hasher.verify(encoded, "pass\ufffdword")).ok


def test_settings_refuse_parameters_below_owasp() -> None:
    for weak in ({"memory_cost": 19455}, {"time_cost": 1}, {"parallelism": 0}):
        with pytest.raises(ValueError, match="OWASP"):
            Argon2Settings(**weak)


# -- unknown users and bad input -------------------------------------------------------------------------


async def test_unknown_user_fails_in_about_the_time_of_a_real_verify(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse battery")
    assert await hasher.verify(None, "correct horse battery") == (False, None)  # also makes the dummy hash

    real, unknown = [], []
    for _ in range(5):
        real.append(await timed(hasher.verify(encoded, "wrong password")))
        unknown.append(await timed(hasher.verify(None, "wrong password")))

    ratio = statistics.median(unknown) / statistics.median(real)
    assert 0.5 < ratio < 2, (real, unknown)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "not a hash",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ",  # no digest
        "$argon2id$v=19$m=19456,t=2,p=1$!!!!$????",  # not base64
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$s\u00e4lt",  # not ASCII
        "$argon2id$v=19$m=x,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$c29tZWhhc2g",
    ],
)
async def test_malformed_stored_hash_fails_without_raising(hasher: PasswordHasher, stored: str) -> None:
    assert await hasher.verify(stored, "correct horse battery") == (False, None)


async def test_tampered_digest_fails(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("correct horse battery")
    tampered = encoded[:-2] + ("AA" if not encoded.endswith("AA") else "BB")
    assert await hasher.verify(tampered, "correct horse battery") == (False, None)


# -- rehash on login -------------------------------------------------------------------------------------


async def test_verify_rehashes_a_hash_with_other_parameters(make_hasher: MakeHasher) -> None:
    legacy = await make_hasher(Argon2Settings(time_cost=3)).hash("correct horse battery")
    current = make_hasher()

    ok, new_hash = await current.verify(legacy, "correct horse battery")

    assert ok
    assert new_hash is not None
    assert new_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await current.verify(new_hash, "correct horse battery") == (True, None)


async def test_wrong_password_against_outdated_hash_yields_no_rehash(make_hasher: MakeHasher) -> None:
    legacy = await make_hasher(Argon2Settings(time_cost=3)).hash("correct horse battery")
    assert await make_hasher().verify(legacy, "wrong password") == (False, None)


# -- the pool --------------------------------------------------------------------------------------------


async def test_hashing_never_blocks_the_event_loop(make_hasher: MakeHasher) -> None:
    hasher = make_hasher(SLOW, workers=2)
    one_hash = await timed(hasher.hash("warm up"))
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.gather(*(hasher.hash(f"password {i}") for i in range(4)))
    done.set()
    await ticker

    assert len(gaps) >= 10
    assert max(gaps) < one_hash / 2, (max(gaps), one_hash)


async def test_pool_runs_at_most_workers_hashes_at_once(make_hasher: MakeHasher) -> None:
    hasher = make_hasher(cls=CountingHasher, workers=1)
    assert isinstance(hasher, CountingHasher)

    results = await asyncio.gather(*(hasher.hash(f"password {i}") for i in range(4)))

    assert len(set(results)) == 4
    assert hasher.peak == 1


async def test_full_queue_rejects_at_once(make_hasher: MakeHasher) -> None:
    hasher = make_hasher(workers=1, max_waiting=2)
    tasks = [asyncio.create_task(hasher.hash(f"password {i}")) for i in range(8)]

    await asyncio.sleep(0)  # one loop step: each task has either taken a slot, queued, or been turned away

    rejected = [task for task in tasks if task.done()]
    assert tasks[3:] == rejected  # one running and two waiting were admitted
    for task in rejected:
        error = task.exception()
        assert isinstance(error, PasswordPoolBusy)
        assert error.retry_after >= 1
        assert error.code == "accounts.busy"
    admitted = await asyncio.gather(*tasks[:3])
    assert all(encoded.startswith("$argon2id$") for encoded in admitted)


async def test_waiter_gives_up_after_max_wait(make_hasher: MakeHasher) -> None:
    hasher = make_hasher(SLOW, workers=1, max_wait=0.05)

    async def attempt(i: int) -> tuple[float, str | PasswordPoolBusy]:
        start = time.perf_counter()
        try:
            outcome: str | PasswordPoolBusy = await hasher.hash(f"password {i}")
        except PasswordPoolBusy as exc:
            outcome = exc
        return time.perf_counter() - start, outcome

    (first_took, first), *late = await asyncio.gather(*(attempt(i) for i in range(4)))

    assert isinstance(first, str)
    for took, outcome in late:
        assert isinstance(outcome, PasswordPoolBusy)
        assert outcome.retry_after >= 1
        assert took < first_took  # turned away after max_wait, not after the queue drained


async def test_cancelled_callers_leak_neither_slots_nor_queue_places(make_hasher: MakeHasher) -> None:
    hasher = make_hasher(cls=CountingHasher, workers=2, max_waiting=1)
    assert isinstance(hasher, CountingHasher)
    hasher.gate.clear()  # hold the hashes in their threads, so "still running" does not depend on timing
    running = [asyncio.create_task(hasher.hash(f"running {i}")) for i in range(2)]
    waiter = asyncio.create_task(hasher.hash("waiting"))
    await wait_until(lambda: hasher.active == 2)

    for task in (running[0], waiter):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # The cancelled caller's hash still runs in its thread and keeps its slot, so a newcomer has to queue, and
    # the queue (one place, the cancelled waiter's given back) is then full.
    queued = asyncio.create_task(hasher.hash("queued"))
    turned_away = asyncio.create_task(hasher.hash("turned away"))
    await asyncio.sleep(0)
    assert not queued.done()
    assert turned_away.done()
    assert isinstance(turned_away.exception(), PasswordPoolBusy)
    hasher.gate.set()
    assert await asyncio.gather(running[1], queued)

    # every slot and queue place is back: `workers` hashes run at once and one more may queue
    hasher.gate.clear()
    hasher.peak = 0
    after = [asyncio.create_task(hasher.hash(f"after {i}")) for i in range(3)]
    await wait_until(lambda: hasher.active == 2)
    hasher.gate.set()
    assert len(set(await asyncio.gather(*after))) == 3
    assert hasher.peak == 2


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are a POSIX feature")
async def test_hashing_threads_yield_the_cpu_to_the_event_loop() -> None:
    hasher = PasswordHasher(workers=1)
    try:
        await hasher.hash("warm the pool up")  # starts the worker thread (its initializer lowers its priority)
        niceness = await asyncio.get_running_loop().run_in_executor(
            hasher._executor, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        )
    finally:
        hasher.close()
    assert niceness >= os.getpriority(os.PRIO_PROCESS, 0) + HASH_THREAD_NICENESS


async def test_admit_refuses_before_any_other_work_when_the_queue_is_full() -> None:
    hasher = PasswordHasher(SLOW, workers=1, max_waiting=1)
    try:
        hasher.admit()  # idle: admitted
        running = asyncio.create_task(hasher.hash("one"))
        waiting = asyncio.create_task(hasher.hash("two"))
        await asyncio.sleep(0.01)
        with pytest.raises(PasswordPoolBusy):
            hasher.admit()
        await asyncio.gather(running, waiting)
        hasher.admit()  # drained: admitted again
    finally:
        hasher.close()


async def test_hashing_works_where_the_priority_cannot_be_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: int) -> None:
        raise PermissionError("not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    hasher = PasswordHasher(workers=1)
    try:
        assert (await hasher.verify(await hasher.hash("still hashed"), "still hashed")).ok
    finally:
        hasher.close()


async def test_an_admitted_login_holds_its_place_until_it_is_done() -> None:
    hasher = PasswordHasher(workers=1, max_waiting=1)
    try:
        with hasher.admission(), hasher.admission():  # e.g. two logins still reading the database
            with pytest.raises(PasswordPoolBusy), hasher.admission():
                pass
            with pytest.raises(PasswordPoolBusy):
                hasher.admit()
        hasher.admit()  # both places given back
    finally:
        hasher.close()


async def test_an_admitted_login_waits_no_longer_than_max_wait_from_admission(make_hasher: MakeHasher) -> None:
    hasher = make_hasher(cls=CountingHasher, workers=1, max_wait=0.2)
    assert isinstance(hasher, CountingHasher)
    hasher.gate.clear()  # the one slot stays taken
    running = asyncio.create_task(hasher.hash("running"))
    await wait_until(lambda: hasher.active == 1)
    start = time.perf_counter()
    with hasher.admission() as deadline:
        await asyncio.sleep(0.15)  # the login's database lookup
        with pytest.raises(PasswordPoolBusy):
            await hasher.verify(None, "late", deadline=deadline)
    assert time.perf_counter() - start < 0.3  # 0.2 s from admission, not 0.15 + 0.2
    hasher.gate.set()
    await running
