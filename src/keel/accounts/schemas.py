"""Accounts' wire models (msgspec): what clients send and receive."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from keel.accounts.models import User

Username = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="3 to 32 of A-Z a-z 0-9 _ . -",
        examples=["ada_l"],
    ),
]
# syntactic check only (RFC 5322's full grammar is not worth it): one @, a dot in the domain, no spaces
Email = Annotated[
    str, Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", examples=["ada@example.com"])
]
Password = Annotated[str, Meta(min_length=8, max_length=128, description="8 to 128 characters; never truncated")]


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    email: Email
    password: Password


class UserRead(msgspec.Struct):
    id: uuid.UUID
    username: str
    email: str
    is_admin: bool
    created_at: datetime

    @classmethod
    def from_model(cls, user: User) -> UserRead:
        return cls(
            id=user.id, username=user.username, email=user.email, is_admin=user.is_admin, created_at=user.created_at
        )


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, Meta(max_length=128)]
    new_password: Password


class TokenRequest(msgspec.Struct):
    """The OAuth2 password grant (RFC 6749 §4.3); `username` may be the email."""

    username: Annotated[str, Meta(min_length=1, max_length=320)]
    password: Annotated[str, Meta(min_length=1, max_length=128)]
    grant_type: Literal["password"] = "password"
    scope: str = ""


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=256)]


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token type, not a secret)


class ProtectedMessage(msgspec.Struct):
    message: str
    user_id: uuid.UUID
    username: str


class PublicMessage(msgspec.Struct):
    message: str
