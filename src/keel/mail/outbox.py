"""The durable outbox: `Postbox.queue` adds a mail to the caller's transaction; `Sender` delivers what is due.

A mail is a row before it is anything else, so a crash, a restart or an SMTP outage loses none (SPEC §4). Every
instance runs a Sender. It claims due rows in one statement that also sets their lease (`claimed_until`) and counts
the attempt; on PostgreSQL the statement's subquery locks rows `FOR UPDATE SKIP LOCKED`, so two instances claim
disjoint rows without waiting for each other; on SQLite the UPDATE goes through keel's single-writer queue
(keel.db), which serialises claims the same way. A sent row is marked sent; a failure is retried with exponential
backoff until `max_attempts`, then the row stays, marked failed, and is counted in `keel_mail_failed_total`. A
sender that dies between claim and send leaves a lease that ends: that one mail goes out again after it, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid, parseaddr

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import metrics
from keel.db import utcnow
from keel.mail.message import build, render
from keel.mail.models import OutboxMail
from keel.mail.transport import Transport
from keel.shared.errors import OUTAGES

log = logging.getLogger("keel.mail")


@dataclass(frozen=True)
class Postbox:
    """What a use case needs to queue a mail: the public URL its links start with, and the sender to wake."""

    public_url: str  # KEEL_PUBLIC_URL, without a trailing slash
    mail_from: str  # KEEL_MAIL_FROM: its domain names the Message-IDs
    wake: Callable[[], None] = lambda: None  # call after the commit: this instance's Sender looks at once

    def queue(self, session: AsyncSession, template: str, *, to: str, **values: str) -> None:
        """Add the mail to `session`'s transaction: it exists exactly when the transaction commits."""
        mail = render(template, public_url=self.public_url, email=to, **values)
        domain = parseaddr(self.mail_from)[1].rpartition("@")[2] or "localhost"
        session.add(
            OutboxMail(
                message_id=make_msgid(domain=domain),
                recipient=to,
                subject=mail.subject,
                text=mail.text,
                html=mail.html,
                next_attempt_at=utcnow(),
                attempts=0,
            )
        )


@dataclass(frozen=True)
class Timing:
    """How the Sender paces itself; tests shorten these."""

    poll_interval: float = 5.0  # seconds between looks for rows another instance wrote or a retry made due
    lease: timedelta = timedelta(minutes=2)  # longer than a whole delivery (transport.SMTP_TIMEOUT per step)
    max_attempts: int = 8  # then the row is kept as failed (about 2 h of retries with the backoff below)
    first_backoff: timedelta = timedelta(seconds=30)  # doubled after each failure
    max_backoff: timedelta = timedelta(hours=1)
    batch: int = 20  # rows claimed at once


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    lease: datetime  # the claimed_until this sender wrote: marking the row checks it is still this sender's
    attempts: int
    message_id: str
    recipient: str
    subject: str
    text: str
    html: str
    created_at: datetime  # the message's Date: when it was written, the same on every attempt


class Sender:
    """The loop that delivers due mail: woken by `wake()` after a commit here, and every `poll_interval` seconds
    for rows that other instances wrote or that are due for a retry."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        transport: Transport,
        *,
        mail_from: str,
        timing: Timing = Timing(),
    ) -> None:
        self._sessionmaker = sessionmaker
        self._transport = transport
        self._mail_from = mail_from
        self._poll_interval = timing.poll_interval
        self._lease = timing.lease
        self._max_attempts = timing.max_attempts
        self._first_backoff = timing.first_backoff
        self._max_backoff = timing.max_backoff
        self._batch = timing.batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="keel.mail.sender")

    async def stop(self) -> None:
        """Stop looking; a delivery in flight is cancelled, and its row is sent again once its lease ends."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the work: a wake during it means another round
            try:
                while await self.deliver_due() == self._batch:
                    pass
            except OUTAGES as exc:  # the database is down: the rows wait in it, and the next round tries again
                log.warning("mail outbox: database unavailable (%s: %s); retrying", type(exc).__name__, exc)
            except Exception:  # a bug: logged whole, and the loop carries on so that other mail still goes out
                log.exception("mail outbox round failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()

    async def deliver_due(self) -> int:
        """Claim the due rows (up to a batch), send each, record how it went; the number claimed."""
        claimed = await self._claim()
        for mail in claimed:
            await self._deliver(mail)
        return len(claimed)

    async def _claim(self) -> list[Claimed]:
        now = utcnow()
        lease = now + self._lease
        due = (
            select(OutboxMail.id)
            .where(
                OutboxMail.sent_at.is_(None),
                OutboxMail.failed_at.is_(None),
                OutboxMail.next_attempt_at <= now,
                or_(OutboxMail.claimed_until.is_(None), OutboxMail.claimed_until < now),
            )
            .order_by(OutboxMail.next_attempt_at)
            .limit(self._batch)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has no row locks (its writer queue serialises)
        )
        async with self._sessionmaker() as session:
            rows = await session.execute(
                update(OutboxMail)
                # the conditions again: a row another sender claimed between the subquery and the lock is skipped
                .where(
                    OutboxMail.id.in_(due.scalar_subquery()),
                    or_(OutboxMail.claimed_until.is_(None), OutboxMail.claimed_until < now),
                    OutboxMail.sent_at.is_(None),
                )
                .values(claimed_until=lease, attempts=OutboxMail.attempts + 1)
                .returning(
                    OutboxMail.id,
                    OutboxMail.attempts,
                    OutboxMail.message_id,
                    OutboxMail.recipient,
                    OutboxMail.subject,
                    OutboxMail.text,
                    OutboxMail.html,
                    OutboxMail.created_at,
                )
                .execution_options(synchronize_session=False)
            )
            claimed = [
                Claimed(
                    row.id,
                    lease,
                    row.attempts,
                    row.message_id,
                    row.recipient,
                    row.subject,
                    row.text,
                    row.html,
                    row.created_at,
                )
                for row in rows
            ]
            await session.commit()
        return claimed

    async def _deliver(self, mail: Claimed) -> None:
        message = build(
            sender=self._mail_from,
            recipient=mail.recipient,
            subject=mail.subject,
            text=mail.text,
            page=mail.html,
            message_id=mail.message_id,
            date=mail.created_at,
        )
        try:
            await self._transport.send(message)
        except Exception as exc:  # any failure to deliver is retried; the row keeps the reason
            await self._failed(mail, exc)
        else:
            await self._mark(mail, sent_at=utcnow(), text="", html="", last_error=None)
            metrics.MAIL_SENT.inc()

    async def _failed(self, mail: Claimed, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if mail.attempts >= self._max_attempts:
            await self._mark(mail, failed_at=utcnow(), text="", html="", last_error=reason)
            metrics.MAIL_FAILED.inc()
            # the row's id, never the message: it holds a token (SPEC §9)
            log.error("mail %s failed for good after %d attempts: %s", mail.id, mail.attempts, type(exc).__name__)
            return
        delay = min(self._first_backoff * 2 ** (mail.attempts - 1), self._max_backoff)
        await self._mark(mail, next_attempt_at=utcnow() + delay, last_error=reason)
        metrics.MAIL_RETRIES.inc()
        log.warning(
            "mail %s not sent (attempt %d, %s); next try in %.0f s",
            mail.id,
            mail.attempts,
            type(exc).__name__,
            delay.total_seconds(),
        )

    async def _mark(self, mail: Claimed, **values: object) -> None:
        async with self._sessionmaker() as session:
            await session.execute(
                update(OutboxMail)
                # still this sender's claim: after a lease ran out, the row is whoever claimed it next
                .where(OutboxMail.id == mail.id, OutboxMail.claimed_until == mail.lease)
                .values(claimed_until=None, **values)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
