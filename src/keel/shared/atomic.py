"""Atomic scripts: a read-modify-write on shared state that no other caller can interleave with.

Each AtomicScript is written twice, as Lua that Redis runs (EVALSHA) and as a Python twin that runs
synchronously on the event loop, which makes it just as atomic within one process. The rate limiter's
GCRA is the main user. Time: the Lua reads Redis' clock (`TIME`) so instance clocks never matter; the twin
gets `now_seconds` from a monotonic clock. Either way only differences of times are meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from keel.shared.errors import outage_as_unavailable
from keel.shared.expiring import Clock, ExpiringDict

Arg = int | float | str
Value = int | float | str | bytes


class LocalState(ExpiringDict[Value]):
    """The in-process twin of the keys a script touches: get, set(key, value, ttl), delete, ttl."""


LocalScript = Callable[[LocalState, Sequence[str], Sequence[Arg], float], list[int]]


@dataclass(frozen=True)
class AtomicScript:
    """One operation in two languages that must return the same integers for the same calls."""

    lua: str
    local: LocalScript  # (state, keys, args, now_seconds) -> the Lua's result


class ScriptRunner(Protocol):
    """Runs AtomicScripts; the Redis runner raises BackendUnavailable during an outage."""

    async def run(self, script: AtomicScript, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        """Run `script` atomically on `keys` with `args`."""
        ...


class InProcessScriptRunner:
    """Runs the Python twins against one process's LocalState (`state`, read with `clock`).

    A caller on the hot path may call one twin's single-key step on `state` itself (keel.ratelimit.limiter): it is
    atomic the same way, since nothing on the event loop interleaves with a plain call."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.state = LocalState(clock)

    async def run(self, script: AtomicScript, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        """Run the twin; it never awaits, so nothing interleaves with it."""
        return script.local(self.state, keys, args, self.clock())


class RedisScriptRunner:
    """Runs the Lua by EVALSHA (loading it again after NOSCRIPT) on keys named `prefix + key`."""

    def __init__(self, redis: Redis, prefix: str = "keel:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._scripts: dict[str, AsyncScript] = {}

    async def run(self, script: AtomicScript, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        """Run the Lua; a script the server forgot (restart, SCRIPT FLUSH) is loaded again transparently."""
        registered = self._scripts.get(script.lua)
        if registered is None:
            registered = self._scripts[script.lua] = self._redis.register_script(script.lua)
        with outage_as_unavailable():
            result = await registered(keys=[self._prefix + key for key in keys], args=args)
        return [int(item) for item in result]
