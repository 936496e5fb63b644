"""Do a keyed write once (SPEC §6): the first request runs, its 2xx answer is recorded in the same transaction, and a
retry within 24 h on any instance gets that answer again.

Who may run: one process at a time per (scope, operation, key). Inside a process a set of keys in flight says so
(the embedded mode is one process, so that is all SQLite needs). Across instances on PostgreSQL the guarded
transaction first takes `pg_try_advisory_xact_lock` on a hash of the key: a twin that does not get it answers 409,
one that gets it after the first committed finds the record and replays it. The lock is the transaction's, so a
process killed mid-request loses it with its connection, and a retry then runs afresh: nothing of the first
committed. The record's primary key is the last word if anything slips past (a sign-up, which commits between its
checks and its insert to keep no connection while Argon2 runs, takes the lock again for its last transaction).

Only 2xx answers are kept: a 4xx/5xx changed nothing, so a retry may as well run again (and may succeed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, TypeVar

from sqlalchemy import delete, func, select, text, tuple_
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.db import utcnow
from keel.errors import Conflict
from keel.idempotency.errors import KeyInUse, KeyReused
from keel.idempotency.models import IdempotencyRecord

log = logging.getLogger("keel.idempotency")
T = TypeVar("T")

TTL: Final = timedelta(hours=24)
PRUNE_EVERY: Final = 100  # one keyed write in this many deletes a batch of expired records, after its commit
PRUNE_BATCH: Final = 500
_LOCK: Final = text("SELECT pg_try_advisory_xact_lock(:id)")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One keyed request: who sent it, to which operation, with which key, and the HMAC of what it asked."""

    scope: str
    operation: str
    key: str
    fingerprint: bytes

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.scope, self.operation, self.key)

    @property
    def lock_id(self) -> int:
        digest = hashlib.sha256("\0".join(self.ident).encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)  # advisory locks take a signed 64-bit key


@dataclass(frozen=True, slots=True)
class Outcome:
    """A recorded answer: what a replay sends again."""

    status: int
    body: bytes
    headers: dict[str, str]


class Claim:
    """The right to run an attempt's write; the write's use case calls `record` just before it commits."""

    def __init__(self, attempt: Attempt, status: int, ttl: timedelta, session: AsyncSession) -> None:
        self.attempt = attempt
        self.status = status
        self.ttl = ttl
        self._session = session  # the session whose transaction took the lock
        self._locked_in = session.sync_session.get_transaction()  # the transaction that holds the lock

    async def hold(self) -> None:
        """Hand the write to another transaction (a group commit): end the claim's own, which returns its connection
        and its lock; the write's transaction takes the lock again (`lock`, or `record`) before it records.

        Between the two a twin on another instance may take the lock: it answers 409 (KeyInUse), or this write
        does, and the client's retry then replays whichever committed."""
        await self._session.rollback()
        self._locked_in = None

    async def lock(self, session: AsyncSession) -> None:
        """Take the claim's lock in the session's transaction unless it holds it already; KeyInUse if a twin does."""
        transaction = session.sync_session.get_transaction()
        if transaction is None or transaction is not self._locked_in:
            # a use case that committed since the claim (a sign-up) is in a new transaction, without the lock
            await _lock(session, self.attempt)
            self._locked_in = session.sync_session.get_transaction()

    async def record(self, session: AsyncSession, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Add the record of this answer to the session's transaction (committed with the write, or not at all)."""
        await self.lock(session)
        now = utcnow()
        session.add(
            IdempotencyRecord(
                scope=self.attempt.scope,
                operation=self.attempt.operation,
                key=self.attempt.key,
                fingerprint=self.attempt.fingerprint,
                status=self.status,
                body=body,
                headers=headers or {},
                created_at=now,
                expires_at=now + self.ttl,
            )
        )


class Idempotency:
    """Keyed writes of one process: the server key fingerprints are made with, and the keys in flight here."""

    def __init__(self, secret: bytes, *, ttl: timedelta = TTL, prune_every: int = PRUNE_EVERY) -> None:
        self._secret = secret
        self.ttl = ttl
        self._prune_every = prune_every
        self._writes = 0
        self._in_flight: set[tuple[str, str, str]] = set()

    def attempt(self, *, scope: str, operation: str, key: str, request: bytes) -> Attempt:
        """The attempt of `scope` at `operation` with `key`; `request` is its canonical form (target and body)."""
        # keyed, not a bare SHA-256: a sign-up's body holds a password, and a bare hash of it could be guessed offline
        fingerprint = hmac.new(self._secret, operation.encode() + b"\0" + request, hashlib.sha256).digest()
        return Attempt(scope, operation, key, fingerprint)

    async def run(
        self,
        session: AsyncSession,
        attempt: Attempt | None,
        work: Callable[[Claim | None], Awaitable[T]],
        *,
        status: int = 201,
    ) -> T | Outcome:
        """`work(claim)`'s result, or the recorded Outcome of an earlier run of the same attempt; KeyReused when the
        key was used for another request, KeyInUse while another run of it is in flight."""
        if attempt is None:
            return await work(None)
        if attempt.ident in self._in_flight:
            raise KeyInUse
        self._in_flight.add(attempt.ident)
        try:
            # the guarded transaction starts here: the lock and the lookup, then the use case's own statements
            await _lock(session, attempt)
            earlier = await _lookup(session, attempt)
            if earlier is not None:
                await session.rollback()  # ends the transaction, and with it the lock
                return earlier
            try:
                result = await work(Claim(attempt, status, self.ttl, session))
            except (Conflict, IntegrityError):
                # lost a race to a twin on another instance (a sign-up's name taken by itself): answer as it did
                await session.rollback()
                earlier = await _lookup(session, attempt)
                await session.rollback()
                if earlier is None:
                    raise
                return earlier
        finally:
            self._in_flight.discard(attempt.ident)
        self._writes += 1
        if self._writes % self._prune_every == 0:
            await self.prune(session)
        return result

    async def prune(self, session: AsyncSession, *, batch: int = PRUNE_BATCH) -> int:
        """Delete up to `batch` expired records; how many went. A failure is logged: the write it follows stands."""
        expired = (
            select(IdempotencyRecord.scope, IdempotencyRecord.operation, IdempotencyRecord.key)
            .where(IdempotencyRecord.expires_at <= utcnow())
            .limit(batch)
        )
        pk = tuple_(IdempotencyRecord.scope, IdempotencyRecord.operation, IdempotencyRecord.key)
        try:
            result = await session.execute(delete(IdempotencyRecord).where(pk.in_(expired)))
            await session.commit()
        except SQLAlchemyError as exc:
            await session.rollback()
            log.warning("pruning expired idempotency records failed: %s: %s", type(exc).__name__, exc)
            return 0
        return int(getattr(result, "rowcount", 0) or 0)


async def count(session: AsyncSession) -> int:
    """How many records there are, expired ones included (for tests and operators)."""
    return int(await session.scalar(select(func.count()).select_from(IdempotencyRecord)) or 0)


async def _lock(session: AsyncSession, attempt: Attempt) -> None:
    bind = session.bind
    if bind is None or bind.dialect.name != "postgresql":
        return  # one process: the set of keys in flight is the lock
    # reentrant within a transaction, released by its end, and by the connection's loss if the process dies
    if not await session.scalar(_LOCK, {"id": attempt.lock_id}):
        raise KeyInUse


async def _lookup(session: AsyncSession, attempt: Attempt) -> Outcome | None:
    record = await session.get(IdempotencyRecord, attempt.ident, populate_existing=True)
    if record is None:
        return None
    if record.expires_at <= utcnow():  # the key is free again: this attempt's record replaces it
        await session.delete(record)
        await session.flush()
        return None
    if not hmac.compare_digest(record.fingerprint, attempt.fingerprint):
        raise KeyReused
    return Outcome(record.status, record.body, dict(record.headers))
