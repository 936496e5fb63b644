"""Accounts' wire models (msgspec): what clients send and receive."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from keel.accounts.models import User
from keel.accounts.names import normalize_email

# Patterns are whole-value matches that read the same in Python and in OpenAPI's ECMA-262 regexes: msgspec runs
# re.search, and Python's `$` also matches before a final newline ("alice\n"), so `(?!\n)` refuses that newline.
# `\Z` would say it in Python alone; in ECMA-262 it is a syntax error or a literal "Z".
Username = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$(?!\n)",
        description="3 to 32 of A-Z a-z 0-9 _ . - (full-width look-alikes are refused, not folded)",
        examples=["ada_l"],
    ),
]
# the syntax is email-validator's (UserCreate.__post_init__); this only bounds the work before it
Email = Annotated[
    str,
    Meta(
        max_length=320,
        description="an email address; stored with its domain lower-cased (email-validator's normal form)",
        examples=["ada@example.com"],
    ),
]
Password = Annotated[str, Meta(min_length=8, max_length=128, description="8 to 128 characters; never truncated")]


def field_error(field: str, message: str) -> ValueError:
    """An error raised in `__post_init__`, located at `field` as msgspec's own errors are (`["body", field]`)."""
    # msgspec reports a __post_init__ error at the struct's path, which for a body is the body itself; the
    # suffix is the form of its field errors, which Litestar and the CLI read the field from
    return ValueError(f"{message} - at `$.{field}`")


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    email: Email
    password: Password

    def __post_init__(self) -> None:
        try:
            self.email = normalize_email(self.email)
        except ValueError as exc:
            raise field_error("email", str(exc)) from None


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

    def __post_init__(self) -> None:
        # the login is compared in the database, and PostgreSQL cannot hold a NUL (asyncpg raises): refuse it here
        if "\x00" in self.username:
            raise field_error("username", "The username must not contain a NUL character.")


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
