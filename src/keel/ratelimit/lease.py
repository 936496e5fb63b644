"""Leases: a hot key's requests answered in-process from tokens taken from Redis in one script run.

With the limiter in Redis every check used to be one entry of an EVALSHA. A lease takes k tokens of a key's GCRA
budget at once (GCRA asked for k advances the key's TAT by k emission intervals, granting fewer when fewer are left),
and the instance answers the key's next requests from them without a round trip. k adapts per key: it starts at 1 (the
exact check), doubles each time a lease is used up before it lapses, and is at most `largest_lease(burst)` =
min(256, burst // 8), never below 1; so a key that is not hot, and every key of a small burst, is checked exactly.
A lease lapses `lifetime(k)` after it was granted: k emission intervals, within 50 ms and 1 s. Its unused tokens are
lost, which errs on the strict side: a client may be refused up to k - 1 requests early, never admitted more. The
checks that waited for a lease still take its tokens after it lapsed: on a loaded event loop they may resume later
than 50 ms after the answer, and would otherwise each ask again, spending the key's budget a token per round trip.

Tolerance (README, tests/ratelimit/test_lease.py): tokens are still taken from the one shared bucket, so the total
admitted never exceeds what exact GCRA grants; a lease only moves a token's use later than its grant, by at most its
lifetime (for a check that was already waiting when the grant came, by the time the event loop takes to resume it).
With N instances, at any moment at most N * (k - 1) tokens are held unused, so in any window a key is
admitted at most N * (k - 1) requests beyond exact GCRA's burst + window / interval, and never more than the tokens
that refill during one lease lifetime plus one: lifetime / interval + 1.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

from keel.ratelimit.gcra import Decision, Grant
from keel.shared.expiring import Clock, ExpiringDict

__all__ = ["MAX_LEASE", "Grant", "Leases", "largest_lease", "lifetime"]

MAX_LEASE: Final = 256  # tokens; one lease is also at most 1/BURST_SHARE of the burst
BURST_SHARE: Final = 8
MIN_LIFETIME, MAX_LIFETIME = 0.05, 1.0  # seconds


def largest_lease(burst: int) -> int:
    """The most tokens one lease takes of a key whose policy allows `burst` back to back."""
    return max(1, min(MAX_LEASE, burst // BURST_SHARE))


def lifetime(size: int, interval_ms: int) -> float:
    """Seconds a lease of `size` tokens lives: the time the bucket takes to refill them, within 50 ms and 1 s."""
    return min(MAX_LIFETIME, max(MIN_LIFETIME, size * interval_ms / 1000))


@dataclass(slots=True)
class _Lease:
    size: int  # tokens asked for: the next lease of this key asks for twice as many
    tokens: int  # granted and not yet handed out
    tat: int  # the key's TAT (local ms) as if the tokens not yet handed out had not been taken: the headers' view


class Leases:
    """The leases of one instance: `take` a token locally, else `start` one lease request per key at a time."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._held: ExpiringDict[_Lease] = ExpiringDict(clock)
        # a key's lease request on its way: (the answer, the lease it fills, emission interval ms)
        self._in_flight: dict[str, tuple[asyncio.Future[Grant | None], _Lease, int]] = {}

    def take(self, bucket: str, interval: int, burst: int) -> Decision | None:
        """Admit one request from the key's live lease; None when it has no tokens left, or none at all."""
        lease = self._held.get(bucket)
        return None if lease is None else self.take_from(lease, interval, burst)

    def take_from(self, lease: _Lease, interval: int, burst: int) -> Decision | None:
        """Admit one request from `lease`, live or lapsed (the checks that waited for it); None when it is empty."""
        if lease.tokens == 0:
            return None
        lease.tokens -= 1
        # whole ms, as GCRA counts them: in float ms, now + burst * interval - tat came out a hair under a whole
        # number of intervals for some clock readings, and `remaining` one under the exact check's
        now = int(self._clock() * 1000)
        lease.tat = max(lease.tat, now) + interval
        remaining = max(0, (now + burst * interval - lease.tat) // interval)
        return Decision(allowed=True, remaining=remaining, retry_after=0.0, reset_after=(lease.tat - now) / 1000)

    def pending(self, bucket: str) -> tuple[asyncio.Future[Grant | None], _Lease] | None:
        """The key's lease request on its way and the lease it fills, which a check waits for rather than asking.

        A request already answered is settled here and None returned, so a check never awaits a finished future:
        that returns without yielding, and the check would loop before the done-callback installs the lease.
        """
        in_flight = self._in_flight.get(bucket)
        if in_flight is None:
            return None
        future, lease, _ = in_flight
        if future.done():
            self._settle(bucket, future)
            return None
        return future, lease

    def size_for(self, bucket: str, burst: int) -> int:
        """Tokens to ask for: 1 for a key without a live lease, twice the last lease's when that one was used up."""
        lease = self._held.get(bucket)
        return 1 if lease is None else min(largest_lease(burst), 2 * lease.size)

    def start(self, bucket: str, size: int, interval: int, future: asyncio.Future[Grant | None]) -> _Lease:
        """Track the lease request `future` for `bucket`: the lease it fills, empty until `future` is answered, and
        then the key's lease."""
        lease = _Lease(size, 0, 0)
        self._in_flight[bucket] = (future, lease, interval)
        # registered before anyone awaits `future`, so the lease is filled when the waiters resume
        future.add_done_callback(lambda done: self._settle(bucket, done))
        return lease

    def _settle(self, bucket: str, future: asyncio.Future[Grant | None]) -> None:
        in_flight = self._in_flight.get(bucket)
        if in_flight is None or in_flight[0] is not future:
            return  # settled already, by `pending`
        del self._in_flight[bucket]
        _, lease, interval = in_flight
        if future.cancelled() or future.exception() is not None:
            return
        grant = future.result()
        if grant is None or grant[0] == 0:  # an outage (fail open) or a refusal: no tokens
            return
        granted, _, _, reset_ms = grant
        lease.tokens = granted
        # the TAT before this grant, on the local clock: Redis' reset_after counts from its own now
        lease.tat = int(self._clock() * 1000) + reset_ms - granted * interval
        self._held.set(bucket, lease, lifetime(lease.size, interval))
