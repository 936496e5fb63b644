"""The outbox's Sender on both backends against a real SMTP server: outages, retries, giving up, leases, and two
senders sharing one outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import db
from keel.mail.models import OutboxMail
from keel.mail.outbox import Postbox, Sender, Timing
from keel.mail.transport import SmtpTransport
from tests.conftest import Backend
from tests.mail.smtp import SmtpServer
from tests.servers import free_port

FAST = Timing(
    poll_interval=0.05,
    lease=timedelta(seconds=30),
    max_attempts=50,
    first_backoff=timedelta(milliseconds=100),
    max_backoff=timedelta(milliseconds=300),
)


@pytest.fixture
async def sessionmaker(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = db.create_engine(backend.database_url)
    try:
        yield db.create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def queue(sessionmaker: async_sessionmaker[AsyncSession], count: int = 1) -> None:
    postbox = Postbox("https://keel.example.com", "keel@example.com")
    async with sessionmaker() as session:
        for i in range(count):
            postbox.queue(session, "email_verification", to=f"user{i}@example.com", username=f"user{i}", token=f"t{i}")
        await session.commit()


async def rows(sessionmaker: async_sessionmaker[AsyncSession]) -> list[OutboxMail]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(OutboxMail)))


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_an_smtp_outage_delays_a_mail_that_then_arrives_exactly_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    smtp = SmtpServer(port=free_port())  # nothing listens there yet
    retries = counter("keel_mail_retries_total")
    await queue(sessionmaker)
    sender = Sender(sessionmaker, SmtpTransport(smtp.url, timeout=2), mail_from="keel@example.com", timing=FAST)
    sender.start()
    try:
        await asyncio.sleep(0.6)
        [row] = await rows(sessionmaker)
        assert row.sent_at is None
        assert row.attempts >= 2
        assert row.last_error
        assert counter("keel_mail_retries_total") - retries >= 2
        with smtp:
            [received] = await smtp.inbox.wait_for(1)
            await asyncio.sleep(0.5)  # long enough for a duplicate to show up
            assert smtp.inbox.count() == 1
    finally:
        await sender.stop()
    [row] = await rows(sessionmaker)
    assert row.sent_at is not None
    assert row.failed_at is None
    assert received["Message-ID"] == row.message_id
    assert (row.text, row.html) == ("", "")  # the token left the database with the mail


async def test_a_mail_is_kept_as_failed_after_its_last_attempt_and_counted(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    failed = counter("keel_mail_failed_total")
    await queue(sessionmaker)
    timing = Timing(poll_interval=0.05, max_attempts=3, first_backoff=timedelta(milliseconds=50))
    sender = Sender(
        sessionmaker, SmtpTransport(f"smtp://127.0.0.1:{free_port()}", timeout=2), mail_from="k@x.io", timing=timing
    )
    sender.start()
    try:
        for _ in range(100):
            [row] = await rows(sessionmaker)
            if row.failed_at is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await sender.stop()
    assert row.failed_at is not None
    assert row.sent_at is None
    assert row.attempts == 3
    assert row.last_error
    assert (row.text, row.html) == ("", "")
    assert counter("keel_mail_failed_total") - failed == 1


async def test_two_senders_on_one_outbox_send_each_mail_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    with SmtpServer() as smtp:
        await queue(sessionmaker, 40)
        timing = Timing(poll_interval=0.05, batch=3)  # small batches: the two senders' claims interleave
        senders = [Sender(sessionmaker, SmtpTransport(smtp.url), mail_from="k@x.io", timing=timing) for _ in "ab"]
        for sender in senders:
            sender.start()
        try:
            received = await smtp.inbox.wait_for(40)
            await asyncio.sleep(0.3)
        finally:
            for sender in senders:
                await sender.stop()
    assert smtp.inbox.count() == 40
    assert len({m["Message-ID"] for m in received}) == 40
    assert all(row.sent_at is not None and row.attempts == 1 for row in await rows(sessionmaker))


class Stuck:
    """A transport that never finishes: the sender 'dies' holding its claim."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def send(self, message: EmailMessage) -> None:
        self.called.set()
        await asyncio.Event().wait()


async def test_a_claim_whose_sender_died_is_sent_once_its_lease_ends(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await queue(sessionmaker)
    stuck = Stuck()
    dying = Sender(sessionmaker, stuck, mail_from="k@x.io", timing=Timing(lease=timedelta(seconds=1)))
    task = asyncio.create_task(dying.deliver_due())
    await asyncio.wait_for(stuck.called.wait(), 5)
    task.cancel()  # the crash: claimed, never marked
    with SmtpServer() as smtp:
        survivor = Sender(sessionmaker, SmtpTransport(smtp.url), mail_from="k@x.io", timing=Timing(poll_interval=0.1))
        survivor.start()
        try:
            await asyncio.sleep(0.5)
            assert smtp.inbox.count() == 0  # the lease still holds
            await smtp.inbox.wait_for(1, within=5)
            await asyncio.sleep(0.3)
            assert smtp.inbox.count() == 1
        finally:
            await survivor.stop()
