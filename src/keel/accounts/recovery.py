"""Account recovery and verification by mail (SPEC §4): reset a forgotten password, prove an address.

Tokens are 256 random bits, mailed once and stored as their SHA-256 (like refresh tokens: a stolen table opens
nothing), single use, and tied to the address they were mailed to. Each mail is queued in the outbox in the same
transaction as its token (keel.mail.outbox), so the 202 never waits for SMTP and no mail is lost.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.accounts.errors import ResetTokenInvalid, VerificationTokenInvalid
from keel.accounts.models import MailedToken, RefreshToken, User
from keel.accounts.names import canonical
from keel.accounts.passwords import PasswordHasher
from keel.accounts.service import Sessions, get_user, revoke_sessions, token_digest, user_scope
from keel.db import utcnow
from keel.identity.tokens import Claims
from keel.mail.outbox import Postbox
from keel.shared.cache import ReadCache

RESET_TTL: Final = timedelta(minutes=30)
VERIFICATION_TTL: Final = timedelta(hours=24)
PASSWORD_RESET: Final = "password_reset"  # noqa: S105 (a token's purpose, not a secret)
EMAIL_VERIFICATION: Final = "email_verification"

# Whether one more mail may go to this address now (its canonical key): the auth policy, per address (SPEC §4)
AddressBudget = Callable[[str], Awaitable[bool]]


async def _always(_address_key: str) -> bool:
    return True


def _token(session: AsyncSession, purpose: str, user: User, ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)  # 256 bits
    session.add(
        MailedToken(
            token_hash=token_digest(token),
            purpose=purpose,
            user_id=user.id,
            email=user.email,
            expires_at=utcnow() + ttl,
        )
    )
    return token


async def request_password_reset(
    session: AsyncSession, postbox: Postbox, *, email: str, admit: AddressBudget = _always
) -> None:
    """Mail a reset token if an account has `email`; the same work, and nothing said, when none has."""
    key = canonical(email)
    is_admitted = await admit(key)  # by address, whether or not it is an account's: a refusal reveals nothing
    user = await session.scalar(select(User).where(User.email_key == key))
    if user is not None and is_admitted:
        token = _token(session, PASSWORD_RESET, user, RESET_TTL)
        postbox.queue(session, PASSWORD_RESET, to=user.email, username=user.username, token=token)
    else:
        # the same round trip to the writer as a mail would cost (SQLite's writer queue included), writing
        # nothing: an unknown address answers in the same time as a known one
        await session.execute(
            update(MailedToken)
            .where(MailedToken.token_hash == token_digest(secrets.token_urlsafe(32)))
            .values(used_at=None)
        )
    await session.commit()
    postbox.wake()


async def confirm_password_reset(
    session: AsyncSession,
    hasher: PasswordHasher,
    sessions: Sessions,
    cache: ReadCache,
    *,
    token: str,
    new_password: str,
) -> None:
    """Spend the reset token, set the new password and end every session of the account (ResetTokenInvalid)."""
    digest = token_digest(token)
    live = (
        MailedToken.token_hash == digest,
        MailedToken.purpose == PASSWORD_RESET,
        MailedToken.used_at.is_(None),
    )
    # a bad token is refused before it costs an Argon2 hash; the token is spent only with the new hash in hand,
    # so a busy hasher (503) leaves it usable
    found = await session.scalar(select(MailedToken.id).where(*live, MailedToken.expires_at > utcnow()))
    await session.commit()  # no connection held while Argon2 runs
    if found is None:
        raise ResetTokenInvalid("The reset token is invalid, expired or already used.")
    password_hash = await hasher.hash(new_password)
    now = utcnow()
    # one atomic statement spends it: of two concurrent confirmations exactly one gets the row back
    spent = (
        await session.execute(
            update(MailedToken)
            .where(*live, MailedToken.expires_at > now)
            .values(used_at=now)
            .returning(MailedToken.user_id, MailedToken.email)
        )
    ).first()
    if spent is None:
        await session.rollback()
        raise ResetTokenInvalid("The reset token is invalid, expired or already used.")
    user = await get_user(session, spent.user_id)
    user.password_hash = password_hash
    if user.email_key == canonical(spent.email):  # reading the mail proved the address
        user.email_verified = True
    # the other reset tokens of the account die with this one: a second mail cannot undo the new password
    await session.execute(
        update(MailedToken)
        .where(MailedToken.user_id == user.id, MailedToken.purpose == PASSWORD_RESET, MailedToken.used_at.is_(None))
        .values(used_at=now)
    )
    families = await session.scalars(
        select(RefreshToken.family_id)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .distinct()
    )
    # the same revocation as a password change, of every session: refresh families, access tokens, sockets (4401)
    await revoke_sessions(session, sessions, list(families))
    await session.commit()  # when there was no session, revoke_sessions committed nothing
    await cache.invalidate(user_scope(user.id))  # email_verified may have changed


async def request_email_verification(
    session: AsyncSession, postbox: Postbox, *, claims: Claims, admit: AddressBudget = _always
) -> None:
    """Mail the caller a token that proves their address."""
    user = await get_user(session, claims.user_id)
    if await admit(user.email_key):
        token = _token(session, EMAIL_VERIFICATION, user, VERIFICATION_TTL)
        postbox.queue(session, EMAIL_VERIFICATION, to=user.email, username=user.username, token=token)
    await session.commit()
    postbox.wake()


async def verify_email(session: AsyncSession, cache: ReadCache, *, token: str) -> None:
    """Spend a verification token: its account's address is verified (VerificationTokenInvalid)."""
    now = utcnow()
    spent = (
        await session.execute(
            update(MailedToken)
            .where(
                MailedToken.token_hash == token_digest(token),
                MailedToken.purpose == EMAIL_VERIFICATION,
                MailedToken.used_at.is_(None),
                MailedToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(MailedToken.user_id, MailedToken.email)
        )
    ).first()
    user = await session.get(User, spent.user_id) if spent is not None else None
    # a token mailed to an address the account no longer has proves nothing about the one it has now
    if spent is None or user is None or user.email_key != canonical(spent.email):
        await session.rollback()
        raise VerificationTokenInvalid("The verification token is invalid, expired or already used.")
    user.email_verified = True
    await session.commit()
    await cache.invalidate(user_scope(user.id))
