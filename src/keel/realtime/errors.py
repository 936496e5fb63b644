"""Realtime's domain errors, and the one function that turns an error ending a socket into its close code."""

from __future__ import annotations

from typing import Final

from keel.errors import Conflict, KeelError, NotFound, RetryLater, Unauthorized, Unavailable

CLOSE_GOING_AWAY: Final = 1001  # shutdown: not an error, the client reconnects elsewhere
CLOSE_TOO_BIG: Final = 1009  # a frame over MAX_FRAME_BYTES; the server (uvicorn) sends it
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN: Final = 1012  # "service restart": resume with since / Last-Event-ID
CLOSE_TRY_LATER: Final = 1013
CLOSE_REVOKED: Final = 4401  # SPEC §7: the session was revoked (4000 + the HTTP status)


class ChannelNotFound(NotFound):
    code = "realtime.channel_not_found"
    title = "Channel not found"


class ChannelNameTaken(Conflict):
    code = "realtime.channel_name_taken"
    title = "Channel name taken"


class SessionRevoked(Unauthorized):
    """The session of an open socket or stream was revoked (logout, password change, reuse)."""

    code = "realtime.session_revoked"
    title = "Session revoked"


class TooSlow(RetryLater):
    """A socket or stream whose unsent backlog passed KEEL_WS_SEND_QUEUE: it resumes once it keeps up."""

    code = "realtime.too_slow"
    title = "Too slow"


def close_code(error: KeelError) -> int:
    """The WebSocket close code for an error that ends an open socket or stream, by its kind (SPEC §7)."""
    if isinstance(error, Unauthorized):
        return CLOSE_REVOKED
    if isinstance(error, Unavailable):  # before RetryLater, its base: resume with `since` once it is back
        return CLOSE_TRY_AGAIN
    if isinstance(error, RetryLater):
        return CLOSE_TRY_LATER
    return CLOSE_INTERNAL_ERROR
