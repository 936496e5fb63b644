"""Password hashing: Argon2id PHC strings, computed in a bounded thread pool off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Final, NamedTuple, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from keel import metrics, telemetry
from keel.accounts.errors import PasswordPoolBusy

_T = TypeVar("_T")

WAITING: Final = metrics.PASSWORD_WAITING
REFUSED_FULL: Final = metrics.PASSWORD_REFUSED.labels("queue_full")
REFUSED_TIMEOUT: Final = metrics.PASSWORD_REFUSED.labels("timeout")

# OWASP's minimum for Argon2id (Password Storage Cheat Sheet): 19 MiB, 2 iterations, 1 lane
OWASP_MIN_MEMORY_COST: Final = 19456
OWASP_MIN_TIME_COST: Final = 2
HASH_LEN: Final = 32
HASH_THREAD_NICENESS: Final = 10
SALT_LEN: Final = 16


@dataclass(frozen=True)
class Argon2Settings:
    """Argon2id cost parameters; the defaults are OWASP's minimum and weaker ones are refused."""

    time_cost: int = OWASP_MIN_TIME_COST
    memory_cost: int = OWASP_MIN_MEMORY_COST  # KiB
    # one lane per hash: the pool admits one hash per core, and more lanes would oversubscribe them
    parallelism: int = 1

    def __post_init__(self) -> None:
        if self.memory_cost < OWASP_MIN_MEMORY_COST or self.time_cost < OWASP_MIN_TIME_COST or self.parallelism < 1:
            raise ValueError(
                f"Argon2 parameters below OWASP's minimum (m >= {OWASP_MIN_MEMORY_COST} KiB, "
                f"t >= {OWASP_MIN_TIME_COST}, p >= 1): m={self.memory_cost}, t={self.time_cost}, p={self.parallelism}"
            )


class Verification(NamedTuple):
    """The outcome of a verify; `new_hash` is set when the password matched a hash with outdated parameters."""

    ok: bool
    new_hash: str | None


def _default_workers() -> int:
    # the CPUs this process may run on (cgroup/affinity aware), not every core of the host
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _encode(password: str) -> bytes:
    # surrogatepass: a lone surrogate (valid in a Python str, possible from JSON) must not turn a login into a 500;
    # its bytes are never valid UTF-8, so they cannot collide with another password's
    return password.encode("utf-8", "surrogatepass")


def _yield_to_the_event_loop() -> None:
    """Run this pool thread at a lower CPU priority than the event loop.

    A hash keeps a core busy for tens of milliseconds; on a core it shares with the event loop, equal priority
    would let a login flood slow every other request. Linux gives each thread its own nice value, so only the
    hashing threads yield; elsewhere (or if refused) this is a no-op.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


class PasswordHasher:
    """Argon2id hashing and verification in a bounded pool with a bounded, time-limited queue in front of it.

    At most `workers` hashes run at once (each holds `memory_cost` KiB), at most `max_waiting` callers wait
    for a slot, and none waits longer than `max_wait` seconds; callers beyond that get PasswordPoolBusy
    instead of piling up memory and latency during a login flood. A login holds its place from before its
    database lookup (`admission`), so logins waiting on the database count against the same bound.
    """

    def __init__(
        self,
        settings: Argon2Settings = Argon2Settings(),  # frozen, so one shared default is safe
        *,
        workers: int | None = None,
        max_waiting: int = 64,
        max_wait: float = 3.0,
    ) -> None:
        workers = _default_workers() if workers is None else workers
        if workers < 1 or max_waiting < 0 or max_wait <= 0:
            raise ValueError("need workers >= 1, max_waiting >= 0 and max_wait > 0")
        self._argon2 = argon2.PasswordHasher(
            time_cost=settings.time_cost,
            memory_cost=settings.memory_cost,
            parallelism=settings.parallelism,
            hash_len=HASH_LEN,
            salt_len=SALT_LEN,
            type=argon2.Type.ID,
        )
        self._max_waiting = max_waiting
        self._places = workers + max_waiting  # running or waiting, what admission() hands out
        self._admitted = 0
        self._max_wait = max_wait
        # waiters give up after max_wait, so the queue has turned over by then and a retry may get in
        self._retry_after = max(1, math.ceil(max_wait))
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="keel-argon2", initializer=_yield_to_the_event_loop
        )
        # Creating it here binds no loop (3.10+): it binds on the first acquire that has to wait.
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    async def hash(self, password: str) -> str:
        """Hash a password into an Argon2id PHC string."""
        job = partial(self._hash_sync, _encode(password))
        return await self._run(job if telemetry.tracer is None else telemetry.traced_job("password.hash", job))

    async def verify(self, password_hash: str | None, password: str, *, deadline: float | None = None) -> Verification:
        """Check a password against a stored hash (None for an unknown user), with a new hash if it is outdated.

        `deadline` (the loop's clock, from `admission`) ends the wait for a slot instead of `max_wait` from now.
        """
        job = partial(self._verify_sync, password_hash, _encode(password))
        return await self._run(
            job if telemetry.tracer is None else telemetry.traced_job("password.verify", job), deadline
        )

    def close(self) -> None:
        """Shut the thread pool down, dropping queued work and waiting for running hashes."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- in the pool ------------------------------------------------------------------------------------

    def _hash_sync(self, secret: bytes) -> str:
        return self._argon2.hash(secret)

    def _verify_sync(self, password_hash: str | None, secret: bytes) -> Verification:
        if password_hash is None or not _is_well_formed(password_hash):
            # an unknown user (or a corrupt row) costs one verify too, so timing does not reveal which exist
            with contextlib.suppress(VerificationError):
                self._argon2.verify(self._dummy(), secret)
            return Verification(ok=False, new_hash=None)
        try:
            self._argon2.verify(password_hash, secret)
        except (VerificationError, InvalidHashError):  # mismatch, or a hash the C library cannot decode
            return Verification(ok=False, new_hash=None)
        if self._argon2.check_needs_rehash(password_hash):
            # the only moment we hold the cleartext: upgrade the stored hash to the current parameters
            return Verification(ok=True, new_hash=self._argon2.hash(secret))
        return Verification(ok=True, new_hash=None)

    def _dummy(self) -> str:
        with self._dummy_lock:  # pool threads may race to make it; one hash is enough
            if self._dummy_hash is None:
                self._dummy_hash = self._argon2.hash(os.urandom(32))
            return self._dummy_hash

    def admit(self) -> None:
        """PasswordPoolBusy now if a hash request would be refused anyway: lets callers shed load before any
        other work (parsing a login form, a database lookup), which keeps a login flood cheap for everyone else."""
        if self._admitted >= self._places:
            REFUSED_FULL.inc()
            raise PasswordPoolBusy(retry_after=self._retry_after)
        self._check_queue()

    def _check_queue(self) -> None:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            REFUSED_FULL.inc()
            raise PasswordPoolBusy(retry_after=self._retry_after)

    @contextlib.contextmanager
    def admission(self) -> Iterator[float]:
        """Hold a place in the pool from now until the caller's hash is done; yields the deadline to verify by.

        A login looks the user up before it hashes, and during a flood that lookup took up to 1.6 s (BENCHMARKS.md).
        Counted only from the queue, that time came on top of `max_wait`. Counted from here, at most
        `workers + max_waiting` logins are past this point, and none waits for a slot past `max_wait` after it.
        """
        self.admit()
        self._admitted += 1
        try:
            yield asyncio.get_running_loop().time() + self._max_wait
        finally:
            self._admitted -= 1

    # -- on the event loop ------------------------------------------------------------------------------

    async def _run(self, job: Callable[[], _T], deadline: float | None = None) -> _T:
        if self._slots.locked():
            self._check_queue()  # not admit(): an admitted login's own place would count against it
            self._waiting += 1
            WAITING.inc()
            try:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self._max_wait
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                REFUSED_TIMEOUT.inc()
                raise PasswordPoolBusy(retry_after=self._retry_after) from None
            finally:
                self._waiting -= 1
                WAITING.dec()
        else:
            await self._slots.acquire()  # a free slot: returns without suspending
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(job)
        except BaseException:
            self._slots.release()
            raise
        # Release the slot when the thread's work really ends, not when the caller stops waiting: a cancelled
        # request's hash keeps running (and holding its memory) until argon2 returns.
        future.add_done_callback(partial(self._release_from_thread, loop))
        return await asyncio.wrap_future(future)

    def _release_from_thread(self, loop: asyncio.AbstractEventLoop, _future: Future[object]) -> None:
        # runs in the pool thread; asyncio primitives may only be touched on their loop
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to wait for the slot
            loop.call_soon_threadsafe(self._slots.release)


def _is_well_formed(password_hash: str) -> bool:
    """Whether a stored hash parses as an Argon2 PHC string (its digest is checked by argon2 itself)."""
    if not password_hash.isascii():
        return False
    try:
        argon2.extract_parameters(password_hash)
    except InvalidHashError:
        return False
    return True
