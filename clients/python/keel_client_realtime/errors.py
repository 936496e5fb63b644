"""Why a subscription or event stream stopped for good: the failures that retrying cannot mend."""

from __future__ import annotations

from typing import Any


class RealtimeError(Exception):
    """A realtime connection ended and will not be retried."""


class Refused(RealtimeError):
    """The server refused the WebSocket handshake or the event stream with a status a retry cannot change
    (401 bad or revoked credentials, 403, 404 unknown channel, 422); `problem` is its problem+json body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(
            f"refused with HTTP {status}: {problem.get('code') or problem.get('title') or ''}".rstrip(": ")
        )
        self.status = status
        self.problem = problem


class Closed(RealtimeError):
    """The server closed the socket with a code that says not to come back (4401: the session was revoked)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class SubscribeFailed(RealtimeError):
    """The server answered a `subscribe` frame with an error frame (`not_found`, `invalid`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
