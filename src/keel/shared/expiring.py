"""An in-process map with per-entry expiry whose memory stays proportional to the live entries."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

Clock = Callable[[], float]


class ExpiringDict(Generic[V]):
    """Entries expire after their TTL: dropped when read, and by a sweep whenever the map doubles in size.

    The sweep costs O(n) once per doubling, O(1) amortised per write, and no background task is needed.
    """

    def __init__(self, clock: Clock = time.monotonic, *, min_sweep: int = 1024) -> None:
        self._clock = clock
        self._items: dict[str, tuple[V, float]] = {}  # key -> (value, expires_at); math.inf never expires
        self._min_sweep = min_sweep
        self._sweep_at = min_sweep

    def __len__(self) -> int:
        """Entries held, including expired ones not yet dropped."""
        return len(self._items)

    def get(self, key: str) -> V | None:
        """The live value of `key`, or None."""
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._items[key]
            return None
        return item[0]

    def set(self, key: str, value: V, ttl: float | None = None) -> None:
        """Store `value` for `ttl` seconds (None: until deleted), replacing any previous value and TTL."""
        self._items[key] = (value, math.inf if ttl is None else self._clock() + ttl)
        if len(self._items) >= self._sweep_at:
            self.sweep()

    def pop(self, key: str) -> V | None:
        """Remove `key` and return its live value, or None."""
        item = self._items.pop(key, None)
        if item is None or item[1] <= self._clock():
            return None
        return item[0]

    def delete(self, key: str) -> None:
        """Remove `key` if present."""
        self._items.pop(key, None)

    def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires; None when it never expires, or is absent or expired."""
        item = self._items.get(key)
        if item is None or item[1] == math.inf:
            return None
        left = item[1] - self._clock()
        return left if left > 0 else None

    def sweep(self) -> None:
        """Drop every expired entry."""
        now = self._clock()
        self._items = {key: item for key, item in self._items.items() if item[1] > now}
        self._sweep_at = max(self._min_sweep, 2 * len(self._items))
