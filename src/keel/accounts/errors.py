"""Accounts' domain errors: each a kind from keel.errors with a stable code clients may branch on."""

from __future__ import annotations

from keel.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized, Unavailable


class UsernameTaken(Conflict):
    code = "accounts.username_taken"
    title = "Username taken"


class EmailTaken(Conflict):
    code = "accounts.email_taken"
    title = "Email taken"


class InvalidCredentials(Unauthorized):
    """Wrong password and unknown user alike: the same body, so it reveals nothing."""

    code = "accounts.invalid_credentials"
    title = "Invalid credentials"


class InvalidRefreshToken(Unauthorized):
    code = "accounts.invalid_refresh_token"
    title = "Invalid refresh token"


class WrongPassword(Forbidden):
    code = "accounts.wrong_password"
    title = "Wrong password"


class UserNotFound(NotFound):
    code = "accounts.user_not_found"
    title = "User not found"


class PasswordPoolBusy(Unavailable):
    """Too many passwords are being hashed already; the client should retry shortly."""

    code = "accounts.busy"
    title = "Busy hashing passwords"


class ResetTokenInvalid(BadRequest):
    """Used, expired, unknown or altered: one answer for all, so it tells a guesser nothing."""

    code = "accounts.reset_token_invalid"
    title = "Invalid password reset token"


class VerificationTokenInvalid(BadRequest):
    code = "accounts.verification_token_invalid"
    title = "Invalid email verification token"
