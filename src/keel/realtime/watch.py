"""No message left behind (SPEC §10): feeds notice a channel's `last_seq` moving without its message arriving.

A message is published only after its row commits, so an instance that dies between the two leaves a committed
message no broker will ever carry. Each instance therefore reads, about once a second, the `last_seq` of every
channel it has a live feed for, in ONE query (`SELECT id, last_seq FROM channels WHERE id = ANY(:ids)`, primary
key lookups) and none at all while no feed is open. A feed behind the database for two reads in a row (a grace of
one interval, so a publish that is merely in flight arrives through the broker first) is filled from the database
(Feed.fill, the path that fills broker gaps). Feeds deliver strictly in seq order and drop any seq they have
delivered, so a fill racing the broker's copy delivers each message once. A lost message reaches followers within
2 intervals plus one history read: ~2 s, well inside the 5 s of the SPEC.

Why a poll and not an outbox relayed by any instance: no schema change and no second write per message; its cost
is one indexed query per instance per second, whatever the load (a busy channel is read once per tick, like an
idle one), measured in BENCHMARKS.md (`bench/seqwatch.py`). An outbox costs a row and a delete per message
and needs a lease so that one relay, not all, takes each row.

Only the scaled backend watches: the embedded one is a single process whose in-process broker cannot fail, and a
process that dies takes its subscribers with it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Final

from keel import metrics
from keel.realtime import service

if TYPE_CHECKING:
    from keel.realtime.hub import Hub

log = logging.getLogger("keel.realtime")

INTERVAL: Final = 1.0  # seconds between reads of the followed channels' last_seq


class SeqWatch:
    """The hub's watcher: started with the hub on the scaled backend, cancelled with it."""

    def __init__(self, hub: Hub, interval: float = INTERVAL) -> None:
        self.hub = hub
        self.interval = interval
        self._behind: dict[uuid.UUID, int] = {}  # channel -> the database's last_seq when the feed was seen behind
        self._failing = False

    async def run(self) -> None:
        while True:
            # a whole interval between reads, however long the last one took: that interval is the broker's grace
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception as exc:  # the database is down: the outage paths handle it; say so once
                if not self._failing:
                    log.warning("cannot read channels' last_seq (%s: %s); retrying", type(exc).__name__, exc)
                self._failing = True
            else:
                self._failing = False

    async def tick(self) -> None:
        feeds = {feed.channel_id: feed for feed in self.hub.feeds() if feed.subscription() is not None}
        if not feeds:
            self._behind.clear()
            return
        metrics.SEQ_WATCH_READS.inc()
        async with self.hub.session() as session:
            seqs = await service.last_seqs(session, list(feeds))
        behind: dict[uuid.UUID, int] = {}
        for channel_id, last_seq in seqs.items():
            feed = feeds[channel_id]
            if last_seq <= feed.last_seq:
                continue
            seen = self._behind.get(channel_id)
            if seen is not None and feed.last_seq < seen:  # behind for a whole interval: the broker lost it
                metrics.SEQ_WATCH_FILLS.inc()
                log.info("channel %s: seq %d committed but never arrived; filling from the database", channel_id, seen)
                feed.fill()
            else:
                behind[channel_id] = last_seq
        self._behind = behind
