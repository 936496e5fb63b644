"""Why a caller is not accepted: each a kind from keel.errors with a stable code clients may branch on.

The codes keep the `accounts.` prefix they were published with before identity left the accounts domain.
"""

from __future__ import annotations

from keel.errors import Unauthorized


class InvalidToken(Unauthorized):
    """A bearer token was given but cannot be accepted (bad signature, expired, revoked, wrong type ...)."""

    code = "accounts.invalid_token"
    title = "Invalid token"
    www_authenticate = 'Bearer error="invalid_token"'


class AuthenticationRequired(Unauthorized):
    """No credentials came with a request or connection that needs a caller."""

    code = "accounts.authentication_required"
    title = "Authentication required"
