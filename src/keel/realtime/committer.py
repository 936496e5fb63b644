"""Group commit of publishes (issue 16): the publishes to a channel that arrive while one of its transactions is in
flight share the next one.

A publish queues its draft and waits. One writer task per busy channel takes up to BATCH queued drafts into one
transaction (service.append_messages: one `UPDATE … RETURNING` reserves their seqs, one multi-row INSERT, their
idempotency records), commits, publishes them to the broker in seq order and only then answers every waiter: an
acknowledged message is committed, and seq stays gapless because the seqs are reserved in the transaction that
writes them. A channel's transactions queue on its row anyway (the seq counter), so one writer per channel loses no
parallelism, and each transaction now carries many messages instead of one.

Failure: a batch that fails commits nothing; on a constraint error (an author deleted meanwhile, a twin's
idempotency record) its drafts are retried one by one so one bad row does not fail its neighbours; any other error
(the database down) is every waiter's, and an outage also that of the drafts queued behind the batch. A waiter that
goes away (its client disconnected) does not take its draft back: queued is sent, as a request the server has read
is, and an idempotent retry answers with its seq.

Shutdown: `close` refuses new publishes (503 / 1012) and waits for the queued ones to commit and go out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel.errors import Unavailable
from keel.idempotency.errors import KeyInUse
from keel.realtime import service
from keel.realtime.schemas import MessageRead
from keel.shared.broker import Broker
from keel.shared.cache import ReadCache
from keel.shared.errors import OUTAGES

log = logging.getLogger("keel.realtime")

BATCH: Final = 256  # drafts per transaction at most: bounds its statement size and the time the row stays locked
SHUTDOWN_RETRY_AFTER: Final = 2


class ShuttingDown(Unavailable):
    code = "realtime.shutting_down"
    title = "Shutting down"


@dataclass(slots=True)
class _Waiter:
    draft: service.Draft
    future: asyncio.Future[MessageRead]


class Committer:
    """This process's publishes, committed a batch per channel transaction."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        broker: Broker,
        cache: ReadCache,
        *,
        batch: int = BATCH,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._broker = broker
        self._cache = cache
        self._batch = batch
        self._queues: dict[uuid.UUID, deque[_Waiter]] = {}
        self._writers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._closed = False
        self.transactions = 0  # committed batches, for tests and the benchmark

    async def publish(self, channel_id: uuid.UUID, draft: service.Draft) -> MessageRead:
        """The message `draft` became, once committed and published; what its transaction raised otherwise."""
        if self._closed:
            raise ShuttingDown("The server is shutting down; publish again.", retry_after=SHUTDOWN_RETRY_AFTER)
        future: asyncio.Future[MessageRead] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(channel_id, deque()).append(_Waiter(draft, future))
        if channel_id not in self._writers:
            self._writers[channel_id] = asyncio.create_task(self._write(channel_id), name=f"publish {channel_id}")
        # shielded: a waiter cancelled (its client went away) leaves the draft to commit as if it had stayed
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Refuse new publishes and wait until the queued ones are committed and published."""
        self._closed = True
        await asyncio.gather(*self._writers.values(), return_exceptions=True)

    async def _write(self, channel_id: uuid.UUID) -> None:
        queue = self._queues[channel_id]
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self._batch))]
                await self._commit(channel_id, batch)
        finally:
            # no await between the loop's last check and here: a publish that queued has been taken
            del self._writers[channel_id]
            del self._queues[channel_id]
            for waiter in queue:  # only if this task was cancelled
                _fail(waiter, ShuttingDown("The publish was not committed; publish again.", retry_after=1))

    async def _commit(self, channel_id: uuid.UUID, batch: Sequence[_Waiter]) -> None:
        try:
            async with self._sessionmaker() as session:
                batch = await _lock_claims(session, batch)
                if not batch:
                    return
                messages = await service.append_messages(session, channel_id, [w.draft for w in batch])
        except IntegrityError as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.info("a batch of %d publishes to %s failed (%s); retrying them one by one", len(batch), channel_id, exc)
            for waiter in batch:
                await self._commit(channel_id, [waiter])
            return
        except Exception as exc:  # every waiter gets it: nothing of the batch committed
            for waiter in batch:
                _fail(waiter, exc)
            if isinstance(exc, OUTAGES):
                # and so do those queued behind it: the database is down, and each has already waited for this
                # batch; a second batch would hold them past SPEC §10's 5 s answer (its statement timeout again)
                queue = self._queues[channel_id]
                while queue:
                    _fail(queue.popleft(), exc)
            return
        self.transactions += 1
        try:
            await service.broadcast(self._broker, self._cache, channel_id, messages)
        finally:  # committed: acknowledged even if the broadcast fails (live delivery is best effort)
            for waiter, message in zip(batch, messages, strict=True):
                if not waiter.future.done():
                    waiter.future.set_result(message)


async def _lock_claims(session: AsyncSession, batch: Sequence[_Waiter]) -> list[_Waiter]:
    """The waiters whose idempotency claim this transaction holds (or who have none); KeyInUse for the others."""
    kept = []
    for waiter in batch:
        claim = waiter.draft.claim
        if claim is not None:
            try:
                await claim.lock(session)
            except KeyInUse as exc:  # a twin on another instance took the key between the claim and this batch
                _fail(waiter, exc)
                continue
        kept.append(waiter)
    return kept


def _fail(waiter: _Waiter, exc: BaseException) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(exc)
