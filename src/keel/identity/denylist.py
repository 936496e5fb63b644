"""Revoked sessions and tokens, held in memory on every instance so checking costs no network round trip.

The database is the durable copy (the `revocations` table); the broker tells every instance about a new
revocation at once; when the broker's feed resumes after an outage, every instance reloads from the database,
so a revocation made while Redis was down is honoured everywhere soon after it returns (SPEC §10).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel.db import utcnow
from keel.identity.models import Revocation
from keel.identity.tokens import Claims
from keel.shared import BackendUnavailable
from keel.shared.broker import Broker, Subscription

log = logging.getLogger("keel.accounts")  # the name operators and tests already filter on

CHANNEL: Final = "keel.revocations"
RETRY_SECONDS: Final = 2.0


class RevokedEntry(msgspec.Struct, array_like=True):
    key: str
    expires_at: float


class Denylist:
    """`is_revoked(claims)` is a dict lookup; `publish` spreads new revocations to every instance."""

    def __init__(self, broker: Broker, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._broker = broker
        self._sessionmaker = sessionmaker
        self._revoked: dict[str, float] = {}
        self._subscription: Subscription | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(list[RevokedEntry])
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Subscribe first, then load: a revocation published in between is not lost."""
        self._subscription = await self._broker.subscribe(CHANNEL, self._on_message)
        self._broker.on_resume(self._reload_soon)
        try:
            await self.reload()
        except Exception:  # the database is down at start: serve (readyz says not ready) and keep trying
            log.warning("revocations not loaded: database unavailable; retrying", exc_info=True)
            self._spawn(self._reload_until_loaded())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._subscription is not None:
            await self._subscription.close()

    async def _reload_until_loaded(self) -> None:
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self.reload()
            except Exception:  # still down; the warning was logged once
                log.debug("revocations still not loaded", exc_info=True)
            else:
                return

    def on_revoked(self, listener: Callable[[str], None]) -> None:
        """Call `listener(key)` for every revocation learnt (realtime closes the session's sockets)."""
        self._listeners.append(listener)

    def is_revoked(self, claims: Claims) -> bool:
        expires_at = self._revoked.get(claims.revocation_key)
        return expires_at is not None and expires_at > time.time()

    async def reload(self) -> None:
        """Add the database's live revocations to the in-memory set."""
        async with self._sessionmaker() as session:
            rows = await session.scalars(select(Revocation).where(Revocation.expires_at > utcnow()))
            loaded = [RevokedEntry(row.key, row.expires_at.timestamp()) for row in rows]
        # merged, never replaced: a revocation that arrived over the broker while the query ran may be missing
        # from its result, and a revocation is never taken back
        self._apply(loaded, notify=False)
        log.info("revocations loaded", extra={"count": len(loaded)})

    async def publish(self, revocations: Iterable[Revocation]) -> None:
        """After the revocations committed: apply them here, then tell the other instances."""
        entries = [RevokedEntry(r.key, r.expires_at.timestamp()) for r in revocations]
        if not entries:
            return
        self._apply(entries)
        try:
            await self._broker.publish(CHANNEL, self._encoder.encode(entries))
        except BackendUnavailable:
            # committed in the database: the other instances reload it when the broker comes back
            log.warning("revocation not broadcast: broker unavailable; instances will reload it on recovery")

    def _on_message(self, data: bytes) -> None:
        self._apply(self._decoder.decode(data))

    def _apply(self, entries: Iterable[RevokedEntry], *, notify: bool = True) -> None:
        now = time.time()
        if len(self._revoked) > 1024:  # keep the set to live entries without a timer
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        for entry in entries:
            self._revoked[entry.key] = max(entry.expires_at, self._revoked.get(entry.key, 0.0))
            if notify:
                for listener in self._listeners:
                    listener(entry.key)

    def _reload_soon(self) -> None:
        self._spawn(self.reload())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._reloaded)

    def _reloaded(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("reloading revocations failed", exc_info=error)
