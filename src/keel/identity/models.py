"""Identity's table: revocations, the durable copy of the denylist."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from keel.db import Base, UtcDateTime


class Revocation(Base):
    """A revoked session (`sid:<uuid>`), kept until no access token of that session can be valid any more.

    Every instance holds these in memory (kept current over the broker); this table is the copy that survives
    a Redis outage or a restart (SPEC §10).
    """

    __tablename__ = "revocations"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
