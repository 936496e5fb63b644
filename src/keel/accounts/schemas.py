"""Accounts' wire models (msgspec): what clients send and receive."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from keel.accounts.models import User
from keel.accounts.names import normalize_email
from keel.types import NO_NUL

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
# the syntax is email-validator's (UserCreate.__post_init__, which also bounds the length before any work);
# `format: email` says so without a maxLength of its own, which fuzzers would fill with 320 characters of nonsense
Email = Annotated[
    str,
    Meta(
        description="an email address (RFC 5322 dot-atom syntax, a public domain: no IP literals, quoted local parts "
        "or special-use domains such as .local and .test); stored with its domain lower-cased (email-validator's "
        "normal form)",
        examples=["ada@example.com"],
        extra_json_schema={"extra": {"format": "email"}},  # Litestar reads schema extras from "extra"
    ),
]
Password = Annotated[
    str,
    Meta(min_length=8, max_length=128, description="8 to 128 characters; never truncated", examples=["correct horse"]),
]
# examples for OpenAPI (SPEC §3): what a client sees, so a reader of the document knows the shapes at a glance
UserId = Annotated[uuid.UUID, Meta(examples=["0b6f3a52-8a0e-4d5b-9c1e-2f7d4a9e6c10"])]
CreatedAt = Annotated[datetime, Meta(description="RFC 3339, UTC", examples=["2026-01-01T12:00:00Z"])]


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
    id: UserId
    username: Annotated[str, Meta(examples=["ada_l"])]
    email: Annotated[str, Meta(examples=["ada@example.com"])]
    email_verified: Annotated[
        bool, Meta(description="The owner proved they read mail at this address", examples=[False])
    ]
    is_admin: Annotated[bool, Meta(examples=[False])]
    created_at: CreatedAt

    @classmethod
    def from_model(cls, user: User) -> UserRead:
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            email_verified=user.email_verified,
            is_admin=user.is_admin,
            created_at=user.created_at,
        )


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, Meta(max_length=128, examples=["correct horse"])]
    new_password: Annotated[Password, Meta(examples=["battery staple"])]


class TokenRequest(msgspec.Struct):
    """The OAuth2 password grant (RFC 6749 §4.3); `username` may be the email."""

    # the login is compared in the database, and PostgreSQL cannot hold a NUL (asyncpg raises): NO_NUL refuses it
    username: Annotated[str, Meta(min_length=1, max_length=320, pattern=NO_NUL)]
    password: Annotated[str, Meta(min_length=1, max_length=128)]
    grant_type: Literal["password"] = "password"
    scope: str = ""


RefreshToken = Annotated[str, Meta(examples=["kq3Zl9xV0cT1b8Qm2rYw5HsPj7Ae4UoN6dFgLtXiBzE"])]


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[RefreshToken, Meta(min_length=1, max_length=256)]


class TokenPair(msgspec.Struct):
    access_token: Annotated[str, Meta(description="A JWT", examples=["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwYjZm…"])]
    refresh_token: RefreshToken
    expires_in: Annotated[int, Meta(description="Seconds the access token stays valid", examples=[900])]
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token type, not a secret)


class ProtectedMessage(msgspec.Struct):
    message: Annotated[str, Meta(examples=["Hello, ada_l."])]
    user_id: UserId
    username: Annotated[str, Meta(examples=["ada_l"])]


class PublicMessage(msgspec.Struct):
    message: Annotated[str, Meta(examples=["Hello from keel. This endpoint needs no token."])]


class PasswordResetRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The address of the account; the answer is the same whether or not one has it."""

    email: Email

    def __post_init__(self) -> None:
        try:
            self.email = normalize_email(self.email)
        except ValueError as exc:
            raise field_error("email", str(exc)) from None


# a mailed token: 43 URL-safe characters; the bounds only keep hostile input cheap
MailedToken = Annotated[
    str,
    Meta(min_length=1, max_length=256, pattern=NO_NUL, examples=["Jx4bq0Vt7Kc2mZs9LrA1wPe6HnYd3UfG8oTiQl5BkCE"]),
]


class PasswordResetConfirm(msgspec.Struct, forbid_unknown_fields=True):
    token: MailedToken
    new_password: Annotated[Password, Meta(examples=["battery staple"])]


class EmailVerification(msgspec.Struct, forbid_unknown_fields=True):
    token: MailedToken


class MailAccepted(msgspec.Struct):
    """A 202: the mail is queued (or, for an address with no account, nothing is, and the answer is the same)."""

    message: Annotated[str, Meta(examples=["If an account has this address, a mail with a reset token is on its way."])]
