"""Accounts at the HTTP edge: login admission (PasswordAdmission) and the providers of its handlers.

Verifying the bearer token is not accounts' business: every domain needs the caller, so keel.http.auth does it.
"""

from __future__ import annotations

import asyncio
from typing import Final

from litestar.di import NamedDependency
from litestar.types import ASGIApp, Receive, Scope, Send

from keel.accounts.errors import PasswordPoolBusy
from keel.accounts.passwords import PasswordHasher
from keel.accounts.recovery import AddressBudget
from keel.accounts.service import Sessions
from keel.http.deps import from_state
from keel.http.errors import send_error
from keel.mail.outbox import Postbox

REFUSAL_PACE: Final = 1.0  # seconds a refusal for a saturated hasher is held before it is sent
HASHES_PASSWORD: Final = "hashes_password"  # noqa: S105 (an opt key): handlers that wait for the password hasher


class PasswordAdmission:
    """Pure ASGI, after the rate limiter: 503 `accounts.busy` for a handler that hashes a password while the
    hasher has no place, before the framework parses the body or opens a database session.

    During a login flood most logins are refused; refused here, each costs a dictionary lookup and two sends
    instead of a form parse, a session and an exception, and the event loop stays free for everyone else.

    The refusal is held REFUSAL_PACE seconds before it is sent. A client that honours Retry-After loses nothing
    (it would wait longer anyway), but one that sends again the moment it is answered, as a flood does, is paced
    to one request a second per connection instead of thousands: answered at once, 200 such connections kept a
    one-core event loop busy with nothing but refusals, and every other request queued behind them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["route_handler"].opt.get(HASHES_PASSWORD):
            hasher: PasswordHasher = scope["litestar_app"].state["hasher"]
            try:
                hasher.admit()
            except PasswordPoolBusy as busy:
                await asyncio.sleep(REFUSAL_PACE)
                await send_error(send, busy)
                return
        await self.app(scope, receive, send)


Hasher = NamedDependency[PasswordHasher]
SessionPolicy = NamedDependency[Sessions]
Mail = NamedDependency[Postbox]
MailBudget = NamedDependency[AddressBudget]

DEPENDENCIES: Final = {
    "hasher": from_state("hasher"),
    "sessions": from_state("sessions"),
    "postbox": from_state("postbox"),
    "mail_budget": from_state("mail_budget"),
}
