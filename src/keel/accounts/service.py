"""Accounts use cases: register, log in, refresh, log out, change password. Framework-free; each owns its commit."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.selectable import ScalarSelect

from keel.accounts.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidRefreshToken,
    UsernameTaken,
    UserNotFound,
    WrongPassword,
)
from keel.accounts.models import RefreshToken, User
from keel.accounts.names import canonical, login_key
from keel.accounts.passwords import PasswordHasher
from keel.accounts.schemas import TokenPair, UserRead
from keel.db import utcnow
from keel.idempotency.service import Claim
from keel.identity.denylist import Denylist
from keel.identity.models import Revocation
from keel.identity.tokens import LEEWAY, Claims, Keyring, session_key
from keel.shared.cache import ReadCache

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Sessions:
    """What issuing and revoking sessions needs: keys, the denylist, the two lifetimes and the retry grace."""

    keyring: Keyring
    denylist: Denylist
    access_ttl: timedelta
    refresh_ttl: timedelta
    refresh_grace: timedelta  # KEEL_REFRESH_GRACE


def token_digest(token: str) -> str:
    # refresh and mailed tokens are 256 random bits: a plain SHA-256 is enough to make a stolen table useless
    return hashlib.sha256(token.encode()).hexdigest()


async def _taken(session: AsyncSession, *, username: str, email: str) -> None:
    # the keys, not lower(): the same answer on PostgreSQL and SQLite, for any case and Unicode form
    username_key, email_key = canonical(username), canonical(email)
    rows = await session.execute(
        select(User.username_key == username_key, User.email_key == email_key).where(
            or_(User.username_key == username_key, User.email_key == email_key)
        )
    )
    for same_username, _ in rows:
        raise (
            UsernameTaken(f"The username {username!r} is taken.")
            if same_username
            else EmailTaken("That email is already registered.")
        )


async def register(
    session: AsyncSession,
    hasher: PasswordHasher,
    *,
    username: str,
    email: str,
    password: str,
    is_admin: bool = False,
    idempotency: Claim | None = None,
) -> User:
    """Create a user, or raise UsernameTaken / EmailTaken (up to case and Unicode form: names.canonical); with an
    idempotency claim, its record commits with the user."""
    await _taken(session, username=username, email=email)  # before hashing: a duplicate costs no Argon2
    await session.commit()  # end the read: no pooled connection is held while Argon2 runs (or waits its turn)
    user = User(username=username, email=email, password_hash=await hasher.hash(password), is_admin=is_admin)
    session.add(user)
    try:
        if idempotency is not None:
            await session.flush()  # the id and created_at the recorded answer holds
            await idempotency.record(session, _encoder.encode(UserRead.from_model(user)))
        await session.commit()
    except IntegrityError:  # a concurrent sign-up won the race; the unique indexes settled it
        await session.rollback()
        await _taken(session, username=username, email=email)
        raise
    return user


async def authenticate(session: AsyncSession, hasher: PasswordHasher, *, login: str, password: str) -> User:
    """The user whose username or email is `login` and whose password matches, else InvalidCredentials."""
    with hasher.admission() as deadline:  # a flood is refused before it costs a database round trip
        key = login_key(login)  # an email key has an "@", a username key never does: at most one matches
        user = await session.scalar(select(User).where(or_(User.username_key == key, User.email_key == key)))
        # end the read, so a login flood queues at the bounded hasher and not, unbounded, for a database connection
        await session.commit()
        # an unknown user still costs one verify (against a dummy hash): timing does not reveal who exists
        result = await hasher.verify(user.password_hash if user else None, password, deadline=deadline)
    if user is None or not result.ok:
        raise InvalidCredentials("The username or password is wrong.")
    if result.new_hash is not None:  # the parameters changed since this hash was made
        user.password_hash = result.new_hash
        await session.commit()
    return user


async def _issue(
    session: AsyncSession, sessions: Sessions, user: User, *, family_id: uuid.UUID, parent_id: uuid.UUID | None
) -> TokenPair:
    refresh_token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            token_hash=token_digest(refresh_token),
            family_id=family_id,
            parent_id=parent_id,
            user_id=user.id,
            expires_at=utcnow() + sessions.refresh_ttl,
        )
    )
    access_token, _ = sessions.keyring.issue_access(
        user_id=user.id,
        username=user.username,
        session_id=family_id,
        scopes=("admin",) if user.is_admin else (),
        ttl=sessions.access_ttl.total_seconds(),
    )
    return TokenPair(access_token, refresh_token, int(sessions.access_ttl.total_seconds()))


async def log_in(
    session: AsyncSession, hasher: PasswordHasher, sessions: Sessions, *, login: str, password: str
) -> TokenPair:
    """Check the credentials and start a session: a new refresh-token family and its first access token."""
    user = await authenticate(session, hasher, login=login, password=password)
    pair = await _issue(session, sessions, user, family_id=uuid.uuid4(), parent_id=None)
    await session.commit()
    return pair


async def refresh(session: AsyncSession, sessions: Sessions, *, refresh_token: str) -> TokenPair:
    """Rotate: spend `refresh_token` and return a new pair; a spent token's reuse revokes its whole family.

    The exception is a retry (SPEC §4): the token spent last in its family, presented again within the grace of
    that rotation, gets another child, a sibling of the one issued first, instead of ending the session.
    """
    now = utcnow()
    digest = token_digest(refresh_token)
    # one atomic statement spends an unspent token, so of two concurrent refreshes exactly one rotates it
    spent = (
        await session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.token_hash == digest,
                RefreshToken.spent_at.is_(None),
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > now,
            )
            .values(spent_at=now)
            .returning(RefreshToken.id, RefreshToken.family_id, RefreshToken.user_id)
            # the request's session holds no refresh token to update in memory: skip matching the WHERE against it
            .execution_options(synchronize_session=False)
        )
    ).first()
    if spent is not None:
        token_id, family_id, user_id = spent
    else:
        # No rollback: on SQLite the UPDATE above already holds the writer lock, so the check and the sibling
        # below are one atomic step; on PostgreSQL the row locks taken by _retried do the same.
        retried = await _retried(session, sessions, digest, now=now)
        if retried is None:
            raise InvalidRefreshToken("The refresh token is invalid, expired or already used.")
        token_id, family_id, user_id = retried
    user = await session.get(User, user_id)
    if user is None:
        raise InvalidRefreshToken("The refresh token is invalid, expired or already used.")
    pair = await _issue(session, sessions, user, family_id=family_id, parent_id=token_id)
    await session.commit()
    return pair


async def _retried(
    session: AsyncSession, sessions: Sessions, digest: str, *, now: datetime
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID] | None:
    """(id, family, user) of a spent token presented again that may have another child, else None.

    The token spent last in its family may: it was spent less than the grace ago, its family is not revoked, and
    none of its children has been spent yet. A retry gives it another child, so every retry within the grace
    passes too, and each child stays usable; once one of them is spent, the token is an older one. Any other
    spent token revokes its family (SPEC §4). Its row and its children's are locked first, so a concurrent
    rotation of a child waits for this decision, or this decision waits for it and sees the child spent.
    """
    token = await session.scalar(select(RefreshToken).where(RefreshToken.token_hash == digest).with_for_update())
    if token is None or token.spent_at is None or token.revoked_at is not None:
        # unknown, expired, or its family already revoked (logout, password change, reuse): no grace, no news
        await session.rollback()
        return None
    children = await session.scalars(
        select(RefreshToken.spent_at).where(RefreshToken.parent_id == token.id).with_for_update()
    )
    is_last_spent = all(spent_at is None for spent_at in children)
    if is_last_spent and token.spent_at > now - sessions.refresh_grace and token.expires_at > now:
        return token.id, token.family_id, token.user_id
    # someone else holds a copy of this token (RFC 6819 §5.2.2.3): end the session for both
    await revoke_sessions(session, sessions, [token.family_id])
    return None


async def revoke_sessions(session: AsyncSession, sessions: Sessions, family_ids: Sequence[uuid.UUID]) -> None:
    """End these sessions: their refresh tokens stop working, and so do their access tokens, everywhere."""
    if not family_ids:
        return
    now = utcnow()
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id.in_(family_ids), RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    # long enough that every access token of the session has expired, leeway included
    until = now + sessions.access_ttl + timedelta(seconds=LEEWAY)
    revocations = [await session.merge(Revocation(key=session_key(f), expires_at=until)) for f in family_ids]
    await session.commit()
    await sessions.denylist.publish(revocations)


async def log_out(session: AsyncSession, sessions: Sessions, *, claims: Claims) -> None:
    """End the session the access token belongs to."""
    await revoke_sessions(session, sessions, [claims.session_id])


async def change_password(
    session: AsyncSession,
    hasher: PasswordHasher,
    sessions: Sessions,
    *,
    claims: Claims,
    current_password: str,
    new_password: str,
) -> None:
    """Replace the password (WrongPassword if `current_password` is wrong) and end every other session."""
    user = await get_user(session, claims.user_id)
    await session.commit()  # no connection held while Argon2 runs
    if not (await hasher.verify(user.password_hash, current_password)).ok:
        raise WrongPassword("The current password is wrong.")
    user.password_hash = await hasher.hash(new_password)
    others = await session.scalars(
        select(RefreshToken.family_id)
        .where(
            RefreshToken.user_id == user.id,
            RefreshToken.family_id != claims.session_id,
            RefreshToken.revoked_at.is_(None),
        )
        .distinct()
    )
    await revoke_sessions(session, sessions, list(others))
    await session.commit()  # when there was no other session, revoke_sessions committed nothing


def username_of(user_id: QueryableAttribute[uuid.UUID]) -> ScalarSelect[str]:
    """The username of the user `user_id` names, as a column other domains select (message authors) in one query.

    A correlated subquery rather than a join, so the users table stays accounts' own: every caller keeps its
    foreign key to users.id with ON DELETE CASCADE, so the user is always there and the answer never NULL.
    """
    return select(User.username).where(User.id == user_id).scalar_subquery()


def user_scope(user_id: uuid.UUID) -> str:
    """The read-cache scope of an account's `GET /users/me`: every write to what UserRead shows invalidates it."""
    return f"user:{user_id}"


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound()
    return user


async def list_users(
    session: AsyncSession, *, limit: int, offset: int = 0, after: tuple[datetime, uuid.UUID] | None = None
) -> Sequence[User]:
    """Users in sign-up order (ties by id), optionally after a (created_at, id) position."""
    query = select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    if after is not None:
        query = query.where(tuple_(User.created_at, User.id) > tuple_(*after))
    return (await session.scalars(query)).all()


async def create_admin(
    session: AsyncSession, hasher: PasswordHasher, cache: ReadCache, *, username: str, email: str, password: str
) -> tuple[User, bool]:
    """Make `username` an admin with this email and password: (user, created) — promotes an existing user."""
    user = await session.scalar(select(User).where(User.username_key == canonical(username)))
    if user is None:
        return await register(session, hasher, username=username, email=email, password=password, is_admin=True), True
    user.is_admin = True
    if canonical(email) != user.email_key:  # a new address is not verified yet
        user.email_verified = False
    user.email = email
    user.password_hash = await hasher.hash(password)
    try:
        await session.commit()
    except IntegrityError:  # the email is another account's
        await session.rollback()
        raise EmailTaken("That email is already registered.") from None
    await cache.invalidate(user_scope(user.id))
    return user, False
