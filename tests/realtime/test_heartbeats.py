"""keel.realtime.heartbeats: one timer beats every member once a period, the first time a period after it joined."""

from __future__ import annotations

import asyncio
import time

from keel.realtime.heartbeats import SLOTS, Heartbeats

PERIOD = 0.6


class Member:
    def __init__(self, heartbeats: Heartbeats | None = None) -> None:
        self.beats: list[float] = []
        self.heartbeats = heartbeats  # set: leaves on its first beat, as a stream that a write ends

    def beat(self) -> None:
        self.beats.append(asyncio.get_running_loop().time())
        if self.heartbeats is not None:
            self.heartbeats.discard(self)


async def test_each_member_beats_once_a_period_starting_a_period_after_it_joined() -> None:
    heartbeats = Heartbeats(PERIOD)
    loop = asyncio.get_running_loop()
    first, second = Member(), Member()
    joined = {first: loop.time()}
    heartbeats.add(first)
    await asyncio.sleep(PERIOD / 2)
    joined[second] = loop.time()
    heartbeats.add(second)
    await asyncio.sleep(1.4)  # until 1.7: the first beats at ~0.6 and 1.2, the second at ~0.9 and 1.5
    tick = PERIOD / SLOTS
    for member in (first, second):
        assert len(member.beats) == 2
        assert PERIOD - 0.01 <= member.beats[0] - joined[member] <= PERIOD + tick + 0.05
        assert abs(member.beats[1] - member.beats[0] - PERIOD) < 0.05
    for member in (first, second):
        heartbeats.discard(member)
    assert len(heartbeats) == 0
    assert heartbeats._timer is None  # nothing left to beat: no timer


async def test_a_busy_loop_delays_a_beat_but_does_not_stretch_the_period() -> None:
    # a neighbour that holds the loop 25 ms of every 26: each of a period's fifteen ticks runs up to 25 ms late,
    # which ticks armed from when they ran add up (a period of ~0.79 s measured); ticks due at fixed times do not
    async def neighbour() -> None:
        while True:
            time.sleep(0.025)  # noqa: ASYNC251 -- holding the loop is the point
            await asyncio.sleep(0.001)

    busy = asyncio.create_task(neighbour())
    heartbeats = Heartbeats(PERIOD)
    member = Member()
    heartbeats.add(member)
    try:
        await asyncio.sleep(PERIOD * 3 + PERIOD / 2)
    finally:
        busy.cancel()
        heartbeats.discard(member)
    assert len(member.beats) == 3
    for earlier, later in zip(member.beats, member.beats[1:], strict=False):
        assert abs(later - earlier - PERIOD) < 0.045  # one beat's lateness, at most 25 ms, and some slack


async def test_a_member_that_leaves_while_beaten_is_beaten_no_more() -> None:
    heartbeats = Heartbeats(PERIOD)
    leaving = Member(heartbeats)
    staying = Member()
    heartbeats.add(leaving)
    heartbeats.add(staying)
    await asyncio.sleep(PERIOD * 2.5)
    assert len(leaving.beats) == 1
    assert len(staying.beats) == 2
    heartbeats.discard(staying)
    heartbeats.discard(staying)  # idempotent
    assert heartbeats._timer is None
