"""The idempotency record: what a keyed write answered, written in the write's own transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, LargeBinary, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from keel.db import Base, UtcDateTime


class IdempotencyRecord(Base):
    """One caller's key for one operation. The primary key is what a retry looks up (and what settles a race)."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(80), primary_key=True)  # `user:<uuid>`, or `ip:<address>` (sign-up)
    operation: Mapped[str] = mapped_column(String(120), primary_key=True)  # `POST /channels/{channel_id}/messages`
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # HMAC-SHA256 of the request under a server key: a sign-up's body holds a password, never stored in clear
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32))
    status: Mapped[int] = mapped_column(SmallInteger)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
