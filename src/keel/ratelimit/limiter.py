"""The Limiter: GCRA checks on the shared script runner, batched per event-loop tick, failing open in an outage.

With `lease=True` (the Redis limiter), a check that need not be exact is answered from a lease of the key's budget
when the instance holds one (keel.ratelimit.lease); the rest go to Redis as before, one entry of the tick's batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Final

from keel import metrics
from keel.ratelimit.gcra import GCRA, RESULT_WIDTH, Decision, Grant, gcra_take, milliseconds
from keel.ratelimit.lease import Leases
from keel.settings import RatePolicy
from keel.shared import BackendUnavailable
from keel.shared.atomic import Arg, InProcessScriptRunner, ScriptRunner
from keel.shared.expiring import Clock

__all__ = ["LIMITER_ERRORS", "RATE_LIMITED", "Decision", "Limiter"]

log = logging.getLogger("keel.ratelimit")

RATE_LIMITED: Final = metrics.RATE_LIMITED
LIMITER_ERRORS: Final = metrics.LIMITER_ERRORS

# one EVALSHA holds the Redis event loop for its whole run; past this many keys a tick's checks go as several
MAX_BATCH: Final = 256

# key, emission interval ms, burst, tokens wanted, the answer (None: the backend is down, fail open)
_Pending = tuple[str, int, int, int, asyncio.Future[Grant | None]]


class Limiter:
    """Counts requests against RatePolicies; allows everything, without waiting, while the backend is down."""

    def __init__(
        self,
        scripts: ScriptRunner,
        *,
        batch: bool,
        lease: bool = False,
        breaker_seconds: float = 1.0,
        log_interval: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._scripts = scripts
        # in-process: checks run as plain calls, no coroutine, future or breaker (nothing can be down)
        self._local = scripts if isinstance(scripts, InProcessScriptRunner) else None
        # leasing only pays when a round trip is saved; in-process every check is already a plain call
        self._leases = Leases(clock) if lease and self._local is None else None
        self._batch = batch
        self._breaker_seconds = breaker_seconds
        self._log_interval = log_interval
        self._pending: list[_Pending] | None = None  # the batch this tick's checks join, until it is sent
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly; keep running batches alive
        self._is_failing = False  # the last call to the backend failed
        self._is_probing = False  # one check is finding out whether the backend is back
        self._probe_at = 0.0  # monotonic time after which a check may probe the backend again
        self._warn_at = -math.inf  # monotonic time after which an outage may be logged again
        self._is_outage_logged = False

    def check_now(self, key: str, policy: RatePolicy, policy_name: str, *, exact: bool = False) -> Decision | None:
        """`check` without awaiting, when the backend is in-process or the key's lease has a token left; None when
        the caller must await `check`."""
        interval = policy.interval_ms
        if self._local is None:
            # a lease's token needs no coroutine either: most checks of a hot key end here
            if self._leases is None or exact:
                return None
            return self._leases.take(f"rl:{policy_name}:{key}", interval, policy.burst)
        # GCRA's one-key step straight on the runner's state: the script's lists and loop cost ~0.5 µs a request
        local = self._local
        allowed, remaining, retry_ms, reset_ms = gcra_take(
            local.state, f"rl:{policy_name}:{key}", interval, policy.burst, 1, milliseconds(local.clock())
        )
        if not allowed:
            RATE_LIMITED.labels(policy_name).inc()
        return Decision(allowed == 1, remaining, retry_ms / 1000, reset_ms / 1000)

    async def check(self, key: str, policy: RatePolicy, policy_name: str, *, exact: bool = False) -> Decision:
        """Count one request by `key` against `policy`; an unavailable backend allows it.

        `exact`: never answer from a lease (the auth policy, whose flood bounds are stated exactly).
        """
        if (decision := self.check_now(key, policy, policy_name, exact=exact)) is not None:
            return decision
        bucket = f"rl:{policy_name}:{key}"
        interval = policy.interval_ms
        if self._leases is None or exact:
            future = self._request(bucket, interval, policy.burst, 1)
            decision = self._decision(None if future is None else await future, policy.burst)
        else:
            decision = await self._leased(self._leases, bucket, interval, policy.burst)
        if not decision.allowed:
            RATE_LIMITED.labels(policy_name).inc()
        return decision

    async def _leased(self, leases: Leases, bucket: str, interval: int, burst: int) -> Decision:
        while True:  # each turn returns, or awaits a request that has not been answered yet
            if (in_flight := leases.pending(bucket)) is not None:
                future, lease = in_flight
            else:
                if (decision := leases.take(bucket, interval, burst)) is not None:
                    return decision
                size = leases.size_for(bucket, burst)
                requested = self._request(bucket, interval, burst, size)
                if requested is None:
                    return self._fail_open(burst)
                future, lease = requested, leases.start(bucket, size, interval, requested)
            # shielded: a caller that goes away must not cancel the lease the others wait for
            grant = await asyncio.shield(future)
            if grant is None or grant[0] == 0:
                # down, or no token left when the script ran: every check that waited for it gets that answer
                return self._decision(grant, burst)
            # granted: a token of it, though it lapsed while this check waited to resume; when the checks that waited
            # too took them all, ask again
            if (decision := leases.take_from(lease, interval, burst)) is not None:
                return decision

    def _request(self, bucket: str, interval: int, burst: int, tokens: int) -> asyncio.Future[Grant | None] | None:
        """Up to `tokens` tokens of `bucket` from the backend; None while the breaker keeps the backend out."""
        if self._is_failing:
            # the breaker: until the window ends, and while one probe is out, nobody waits on a dead backend
            if self._is_probing or time.monotonic() < self._probe_at:
                return None
            self._is_probing = True
        if self._batch:
            return self._submit(bucket, interval, burst, tokens)
        task = asyncio.ensure_future(self._run_one(bucket, interval, burst, tokens))
        # a task cancelled before its first step never runs _run_one's `finally`: the probe must end anyway
        task.add_done_callback(self._end_probe)
        return task

    def _end_probe(self, _: object) -> None:
        self._is_probing = False

    def _decision(self, grant: Grant | None, burst: int) -> Decision:
        if grant is None:
            return self._fail_open(burst)
        granted, remaining, retry_after_ms, reset_after_ms = grant
        return Decision(granted > 0, remaining, retry_after_ms / 1000, reset_after_ms / 1000)

    async def _run_one(self, bucket: str, interval: int, burst: int, tokens: int) -> Grant | None:
        try:
            flat = await self._scripts.run(GCRA, [bucket], [interval, burst, tokens])
        except BackendUnavailable as exc:
            self._on_outage(exc)
            return None
        self._on_success()
        granted, remaining, retry_after_ms, reset_after_ms = flat
        return granted, remaining, retry_after_ms, reset_after_ms

    def _submit(self, bucket: str, interval: int, burst: int, tokens: int) -> asyncio.Future[Grant | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Grant | None] = loop.create_future()
        if self._pending is None or len(self._pending) >= MAX_BATCH:
            self._pending = []
            # a task's first step is scheduled with call_soon, so the batch leaves on the next loop iteration,
            # carrying every check that the tasks running in this iteration make
            task = loop.create_task(self._run_batch(self._pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._pending.append((bucket, interval, burst, tokens, future))
        return future

    async def _run_batch(self, batch: list[_Pending]) -> None:
        if self._pending is batch:
            self._pending = None  # from now on, checks start the next batch
        args: list[Arg] = []
        for _, interval, burst, tokens, _ in batch:
            args += (interval, burst, tokens)
        try:
            flat = await self._scripts.run(GCRA, [bucket for bucket, *_ in batch], args)
        except BackendUnavailable as exc:
            self._on_outage(exc)
            for *_, future in batch:
                if not future.done():
                    future.set_result(None)
        except Exception as exc:
            # not an outage but a fault (a script error, a bug): each caller raises it, as if it had run alone
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self._on_success()
            for i, (*_, future) in enumerate(batch):
                if not future.done():  # a caller cancelled meanwhile has gone; its request still counted
                    j = i * RESULT_WIDTH
                    future.set_result((flat[j], flat[j + 1], flat[j + 2], flat[j + 3]))
        finally:
            self._is_probing = False
            for *_, future in batch:
                if not future.done():  # this task was cancelled (the loop is closing): so are its callers
                    future.cancel()

    def _fail_open(self, burst: int) -> Decision:
        LIMITER_ERRORS.inc()
        return Decision(allowed=True, remaining=burst - 1, retry_after=0.0, reset_after=0.0)

    def _on_outage(self, exc: BackendUnavailable) -> None:
        now = time.monotonic()
        self._is_failing = True
        self._probe_at = now + self._breaker_seconds
        if now >= self._warn_at:
            # once per interval: during an outage every request would otherwise log
            self._warn_at = now + self._log_interval
            self._is_outage_logged = True
            log.warning(
                "rate limiter backend unavailable, failing open (logged at most every %gs): %s",
                self._log_interval,
                exc,
            )

    def _on_success(self) -> None:
        if self._is_failing:
            self._is_failing = False
            # paired with the warning, so a flapping backend logs no more often than the warning does
            if self._is_outage_logged:
                self._is_outage_logged = False
                log.info("rate limiter backend reachable again, limiting resumed")
