"""Account recovery and verification endpoints (SPEC §4, "by mail"); mounted under /api/v1 and /api/v2."""

from __future__ import annotations

from typing import Final

from litestar import Controller, post
from litestar.params import JSONBody

from keel.accounts import recovery
from keel.accounts.deps import HASHES_PASSWORD, Hasher, Mail, MailBudget, SessionPolicy
from keel.accounts.schemas import EmailVerification, MailAccepted, PasswordResetConfirm, PasswordResetRequest
from keel.http.auth import SECURITY, USER, current_principal
from keel.http.deps import DbSession, SharedBackends
from keel.http.errors import problem_response
from keel.http.requests import RATE_LIMIT

# one body whatever happened, so it tells nobody whether the address has an account
RESET_ACCEPTED: Final = MailAccepted("If an account has this address, a mail with a reset token is on its way.")
VERIFICATION_ACCEPTED: Final = MailAccepted("A mail with a verification token is on its way.")
BUSY: Final = {503: problem_response("Too many passwords are being hashed; retry after Retry-After seconds")}


class RecoveryController(Controller):
    path = "/"
    tags = ["auth"]

    @post(
        "/auth/password-reset",
        summary="Ask for a password reset mail",
        status_code=202,
        # it sends mail: the auth policy per client address here, and per mailed address in the use case
        opt={RATE_LIMIT: "auth"},
    )
    async def request_password_reset(
        self, data: JSONBody[PasswordResetRequest], db_session: DbSession, postbox: Mail, mail_budget: MailBudget
    ) -> MailAccepted:
        """Mail a single-use reset token, valid 30 minutes, to the account with this address. The answer is the
        same, in similar time, whether or not an account has it; past the auth policy's budget for one address,
        nothing more is mailed to it, and the answer is still 202."""
        await recovery.request_password_reset(db_session, postbox, email=data.email, admit=mail_budget)
        return RESET_ACCEPTED

    @post(
        "/auth/password-reset/confirm",
        summary="Set a new password with a reset token",
        status_code=204,
        opt={RATE_LIMIT: "auth", HASHES_PASSWORD: True},
        responses={400: problem_response("The token is invalid, expired or already used"), **BUSY},
    )
    async def confirm_password_reset(
        self,
        data: JSONBody[PasswordResetConfirm],
        db_session: DbSession,
        hasher: Hasher,
        sessions: SessionPolicy,
        backends: SharedBackends,
    ) -> None:
        """Set a new password with the token from the reset mail; every session of the account ends, its sockets
        closing with 4401. A used, expired or unknown token gets 400 `accounts.reset_token_invalid`."""
        await recovery.confirm_password_reset(
            db_session, hasher, sessions, backends.cache, token=data.token, new_password=data.new_password
        )

    @post(
        "/users/me/email-verification",
        summary="Ask for an email verification mail",
        status_code=202,
        opt={**USER, RATE_LIMIT: "auth"},
        security=SECURITY,
    )
    async def request_email_verification(
        self, db_session: DbSession, postbox: Mail, mail_budget: MailBudget
    ) -> MailAccepted:
        """Mail the caller a single-use verification token, valid 24 hours."""
        await recovery.request_email_verification(db_session, postbox, claims=current_principal(), admit=mail_budget)
        return VERIFICATION_ACCEPTED

    @post(
        "/auth/verify-email",
        summary="Verify an email address with a token",
        status_code=204,
        responses={400: problem_response("The token is invalid, expired or already used")},
    )
    async def verify_email(
        self, data: JSONBody[EmailVerification], db_session: DbSession, backends: SharedBackends
    ) -> None:
        """Prove the address with the token from the verification mail: the account's `email_verified` becomes
        true. A bad token gets 400 `accounts.verification_token_invalid`."""
        await recovery.verify_email(db_session, backends.cache, token=data.token)
