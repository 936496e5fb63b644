"""Accounts' tables: users, refresh tokens (rotated within a family) and mailed tokens. Revocations belong to
keel.identity."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Uuid, false
from sqlalchemy.orm import Mapped, mapped_column, validates

from keel.accounts.names import EMAIL_KEY_LENGTH, canonical
from keel.db import Base, UtcDateTime, utcnow


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(320))
    # canonical(username) and canonical(email), set whenever those are: what uniqueness and logins compare
    username_key: Mapped[str] = mapped_column(String(32))
    email_key: Mapped[str] = mapped_column(String(EMAIL_KEY_LENGTH))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # true once the owner proved they read mail at `email` (a verification or a password reset by mail)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    @validates("username", "email")
    def _keep_key(self, field: str, value: str) -> str:
        setattr(self, f"{field}_key", canonical(value))
        return value


# uniqueness up to case and Unicode form, the same on PostgreSQL and SQLite (keys computed in Python, not lower())
Index("uq_users_username_key", User.username_key, unique=True)
Index("uq_users_email_key", User.email_key, unique=True)


class RefreshToken(Base):
    """One opaque refresh token, stored as its SHA-256; a family is one login session (`sid` in access tokens)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    # indexed: a retried token's children are looked up to tell whether it is still the last spent
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    spent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class MailedToken(Base):
    """A single-use token sent by mail (a password reset or an email verification), stored as its SHA-256.

    `email` is the address it was mailed to: a token proves that address only, so a verification token mailed
    before the user changed their email proves nothing about the new one.
    """

    __tablename__ = "mailed_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(32))  # "password_reset" or "email_verification"
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
