"""The mail outbox: every mail keel sends is first a row here, written in the transaction that made it necessary."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from keel.db import Base, UtcDateTime, utcnow


class OutboxMail(Base):
    """One mail to send: pending (sent_at and failed_at empty), sent, or failed for good.

    A sender claims a due row by setting `claimed_until` (its lease): no other sender takes it before the lease
    ends, and a sender that crashed mid-send leaves a lease that ends, so the mail goes out once it does.
    The bodies (which carry a token) are emptied once the row is sent or has failed for good.
    """

    __tablename__ = "mail_outbox"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    message_id: Mapped[str] = mapped_column(String(255))  # the same on every attempt: receivers can deduplicate
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(String(500))


# the senders' claim reads pending rows by due time; sent and failed rows are never read again
Index(
    "ix_mail_outbox_pending",
    OutboxMail.next_attempt_at,
    postgresql_where=OutboxMail.sent_at.is_(None) & OutboxMail.failed_at.is_(None),
)
