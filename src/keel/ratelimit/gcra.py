"""GCRA (the generic cell rate algorithm) for many keys in one atomic call, in Lua and as its Python twin.

Each key stores one number, its theoretical arrival time (TAT) in milliseconds: the time at which the bucket
would be full again. A request is admitted unless the TAT has run more than `burst - 1` emission intervals
ahead of now; that makes "10/s burst 20" admit exactly 20 back-to-back requests, then one per 100 ms. As in
redis-cell and throttled, nothing ever ticks: state changes only when a request arrives, and a key expires
exactly when its bucket is full again, so idle clients cost no memory.

Several keys go into one call so that the Redis limiter can send every check of one event-loop tick as one
EVALSHA. The keys are processed in order, so a key listed twice sees its own earlier update. Each key asks for
`wanted` tokens: 1 is the exact check, more a lease of the key's budget (keel.ratelimit.lease), granted in part when
fewer are left; one script serves both, so they share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from keel.shared.atomic import Arg, AtomicScript, LocalState

RESULT_WIDTH: Final = 4  # granted (for one token: allowed), remaining, retry_after_ms, reset_after_ms per key

Grant = tuple[int, int, int, int]  # GCRA's four integers for one key: granted, remaining, retry ms, reset ms


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__, 0.5 µs a check
class Decision:
    """The outcome of one check: whether it passed, requests left, and seconds until the next one and until full."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float


def decisions(flat: Sequence[int]) -> list[Decision]:
    """Decode the script's flat result, four integers per key, into one Decision per key."""
    return [
        Decision(flat[i] > 0, flat[i + 1], flat[i + 2] / 1000, flat[i + 3] / 1000)
        for i in range(0, len(flat), RESULT_WIDTH)
    ]


def gcra_local(state: LocalState, keys: Sequence[str], args: Sequence[Arg], now_seconds: float) -> list[int]:
    """The Python twin of GCRA_LUA: the same integers for the same calls."""
    now = milliseconds(now_seconds)
    result: list[int] = []
    for i, key in enumerate(keys):
        result += gcra_take(state, key, int(args[3 * i]), int(args[3 * i + 1]), int(args[3 * i + 2]), now)
    return result


def milliseconds(seconds: float) -> int:
    """A clock's seconds as GCRA's whole milliseconds: rounded, not floored, since a fake clock's seconds * 1000 may
    land just below a whole millisecond."""
    return round(seconds * 1000)


def gcra_take(state: LocalState, key: str, interval: int, burst: int, wanted: int, now: int) -> Grant:
    """One key of `gcra_local` at `now` ms; the in-process limiter calls it alone, without the script's lists."""
    stored = state.get(key)
    tat = now if stored is None else int(stored)
    start = tat if tat > now else now  # max() and min() are calls: this is the hot path of every request
    available = (now + burst * interval - start) // interval
    granted = wanted if wanted < available else available
    if granted <= 0:
        return 0, 0, start + interval - burst * interval - now, tat - now
    new_tat = start + granted * interval
    state.set(key, new_tat, (new_tat - now) / 1000)
    return granted, available - granted, 0, new_tat - now


# KEYS: the buckets. ARGV: emission_interval_ms, burst, wanted for each key in turn. Returns granted (0..wanted),
# remaining, retry_after_ms, reset_after_ms for each key in turn: up to `wanted` tokens, fewer when fewer are left.
# With wanted = 1 it is the exact check: granted is allowed (1/0), refused when the TAT has run more than
# `burst - 1` intervals ahead (tests/ratelimit/test_gcra.py holds it to the textbook GCRA over random traffic).
# With wanted = k it is a lease (keel.ratelimit.lease), so exact checks and leases share one batch.
# Redis >= 5 replicates a script's effects rather than the script, so reading TIME before writing is allowed.
GCRA_LUA: Final = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local result = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local wanted = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  local start = math.max(tat, now)
  local granted = math.max(0, math.min(wanted, math.floor((now + burst * interval - start) / interval)))
  local n = #result
  if granted == 0 then
    result[n + 1] = 0
    result[n + 2] = 0
    result[n + 3] = start + interval - burst * interval - now
    result[n + 4] = tat - now
  else
    local new_tat = start + granted * interval
    redis.call('SET', key, string.format('%d', new_tat), 'PX', new_tat - now)
    result[n + 1] = granted
    result[n + 2] = math.floor((now + burst * interval - new_tat) / interval)
    result[n + 3] = 0
    result[n + 4] = new_tat - now
  end
end
return result
"""

GCRA: Final = AtomicScript(lua=GCRA_LUA, local=gcra_local)
