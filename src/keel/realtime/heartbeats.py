"""One timer for the keep-alives of every event stream that an instance writes directly (keel.realtime.events).

A timer per stream (loop.call_later) is a TimerHandle, a uvloop timer and a bound method: 570 bytes of each idle
stream (bench/sse_memory.py), against a goal of 12 KiB for all of it (issue 16). Here one timer ticks SLOTS times a
period, each tick beating the members of the next of SLOTS sets: each member beats once a period, the first time
between one period and one period and a tick after it joined (it waits for the tick to join the set just beaten),
and the beats are spread over the period rather than all at once. The ticks are due at fixed times (call_at), so
a loop that runs each tick a little late does not stretch the period by fifteen delays.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

KEEP_ALIVE: Final = 15.0  # seconds between an event stream's keep-alives (SPEC §8)
SLOTS: Final = 15
_JOINING: Final = -1


class Beating(Protocol):
    def beat(self) -> None: ...


class Heartbeats:
    def __init__(self, period: float = KEEP_ALIVE) -> None:
        self._tick = period / SLOTS
        self._slots: list[set[Beating]] = [set() for _ in range(SLOTS)]
        self._joining: set[Beating] = set()  # joined since the last tick
        self._slot_of: dict[Beating, int] = {}  # JOINING until the tick puts it in a slot
        self._index = 0
        self._due = 0.0  # the loop time the next tick is due
        self._timer: asyncio.TimerHandle | None = None

    def add(self, member: Beating) -> None:
        """Beat `member` once a period from a period after now."""
        self._joining.add(member)
        self._slot_of[member] = _JOINING
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self._tick
            self._timer = loop.call_at(self._due, self._beat)

    def discard(self, member: Beating) -> None:
        index = self._slot_of.pop(member, None)
        if index is not None:
            (self._joining if index == _JOINING else self._slots[index]).discard(member)
        if not self._slot_of and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def _beat(self) -> None:
        self._index = index = (self._index + 1) % SLOTS
        slot = self._slots[index]
        members = tuple(slot)  # a copy: a beat may end its stream, which leaves
        for member in self._joining:  # next beaten with this slot, a period from now
            self._slot_of[member] = index
        slot |= self._joining
        self._joining.clear()
        # armed first, so a member's failure cannot stop the others' beats; the last member to leave cancels it.
        # A loop that fell more than a tick behind (blocked) starts afresh rather than firing the missed ticks at once.
        loop = asyncio.get_running_loop()
        self._due = max(self._due + self._tick, loop.time())
        self._timer = loop.call_at(self._due, self._beat)
        for member in members:
            member.beat()
