"""Who may open /ws and /events: a bearer header, a ticket or a session cookie (from an allowed Origin), the rate
limiter, then the cap on streams (SPEC §5).

Refusals happen before a socket is accepted or a stream starts, as problem+json with the status of the error.
"""

from __future__ import annotations

import logging
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Final

from keel.errors import KeelError, RateLimited, Unavailable
from keel.http.auth import AmbiguousCredentials, credentials
from keel.http.errors import render_error
from keel.http.scope import set_caller, set_set_cookies
from keel.http.sessions import OriginRefused, SessionCookies
from keel.idempotency.service import Idempotency
from keel.identity.errors import AuthenticationRequired, InvalidToken
from keel.identity.tokens import Claims
from keel.identity.verifier import TokenVerifier
from keel.ratelimit.deps import RateLimits, rate_limit_headers, retry_after
from keel.realtime import tickets
from keel.realtime.committer import Committer
from keel.realtime.hub import Hub
from keel.shared.cache import ReadCache
from keel.shared.errors import OUTAGES
from keel.shared.kv import KeyValueStore

log = logging.getLogger("keel.realtime")


@dataclass(frozen=True)
class Realtime:
    """What the realtime endpoints need, built once by the app's lifespan."""

    hub: Hub
    verifier: TokenVerifier
    kv: KeyValueStore
    cache: ReadCache
    rate_limits: RateLimits
    send_queue: int  # KEEL_WS_SEND_QUEUE
    streams: StreamCounts
    session_cookies: SessionCookies
    idempotency: Idempotency  # a publish frame's idempotency_key
    committer: Committer  # every publish, REST and WebSocket, goes through it


class Refused(Exception):
    """A connection refused before it opens, with the response that says why."""

    def __init__(self, error: KeelError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(str(error))
        self.status, own_headers, self.body = render_error(error)
        self.headers = [*(headers or ()), *own_headers]

    @classmethod
    def outage(cls, exc: Exception) -> Refused:
        """The 503 for a connection the database or Redis could not check: the same answer REST gives."""
        log.warning("realtime connection refused, a dependency is unavailable: %s: %s", type(exc).__name__, exc)
        return cls(Unavailable("A service keel depends on is not answering; retry shortly.", retry_after=2))


# nothing frees a slot but the user closing one of their own streams; this only paces a client that retries
STREAMS_RETRY_AFTER: Final = 5


class TooManyStreams(RateLimited):
    code = "realtime.too_many_streams"
    title = "Too many open streams"


class StreamSlot:
    """One open WebSocket or SSE stream counted against its user; the `with` block it guards releases it."""

    def __init__(self, counts: StreamCounts, user_id: uuid.UUID) -> None:
        self._counts = counts
        self._user_id: uuid.UUID | None = user_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        if self._user_id is not None:
            self._counts.release(self._user_id)
            self._user_id = None


class StreamCounts:
    """The WebSockets and SSE streams each user holds open in this process, at most `limit` each (SPEC §5)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # KEEL_MAX_STREAMS_PER_USER
        self._open: dict[uuid.UUID, int] = {}

    def hold(self, user_id: uuid.UUID) -> StreamSlot:
        """A slot for one more stream of `user_id`, to use in a `with` block at once; Refused (429) at the limit."""
        count = self._open.get(user_id, 0)
        if count >= self.limit:
            raise Refused(
                TooManyStreams(
                    f"You hold {self.limit} open WebSockets and event streams, the most allowed; close one first.",
                    retry_after=STREAMS_RETRY_AFTER,
                )
            )
        self._open[user_id] = count + 1
        return StreamSlot(self, user_id)

    def release(self, user_id: uuid.UUID) -> None:
        count = self._open.get(user_id, 0) - 1
        if count > 0:
            self._open[user_id] = count
        else:
            self._open.pop(user_id, None)

    def held(self, user_id: uuid.UUID) -> int:
        return self._open.get(user_id, 0)


def query_params(scope: Any) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))


async def admit(realtime: Realtime, scope: Any) -> Claims:
    """The claims a connection opens with, or Refused. Leaves them in the scope for the rate limiter."""
    try:
        claims = await authenticate(realtime, scope)
    except OUTAGES as exc:  # a ticket cannot be redeemed while Redis is down
        raise Refused.outage(exc) from None
    set_caller(scope, claims)
    results = await realtime.rate_limits.check(scope)
    wait = retry_after(results)
    if wait is not None:
        raise Refused(
            RateLimited(f"Too many connections; retry in {wait} s.", retry_after=wait), rate_limit_headers(results)
        )
    return claims


async def authenticate(realtime: Realtime, scope: Any) -> Claims:
    """The caller by bearer header, else ticket, else session cookie: explicit credentials before ambient ones."""
    try:
        token, cookie = credentials(scope["headers"])
    except AmbiguousCredentials as exc:
        raise Refused(exc) from None
    if token is not None:
        try:
            return realtime.verifier.verify(token)
        except InvalidToken as exc:
            raise Refused(exc) from None
    ticket = query_params(scope).get(tickets.QUERY_PARAM)
    if ticket:
        claims = await tickets.redeem(realtime.kv, ticket[0])
        if claims is None:
            raise Refused(InvalidToken("The ticket is unknown, used or expired."))
        if realtime.verifier.is_revoked(claims):
            raise Refused(InvalidToken("The ticket's session has been revoked."))
        return claims
    session = await _cookie_session(realtime, scope, cookie) if cookie is not None else None
    if session is None:
        raise Refused(
            AuthenticationRequired(
                "Send a bearer token, a ticket from POST /api/v1/realtime/tickets, or a session cookie.",
                # the code /ws and /events have always refused with, which clients may branch on
                code="realtime.authentication_required",
            )
        )
    return session


async def _cookie_session(realtime: Realtime, scope: Any, cookie: bytes) -> Claims | None:
    cookies = realtime.session_cookies
    if not cookies.origin_allowed(scope["scheme"], scope["headers"]):
        # a page on another site would open this with the victim's cookie (cross-site WebSocket hijacking)
        raise Refused(OriginRefused("A session cookie is accepted only from this server's origin or a CORS origin."))
    session = await cookies.authenticate(cookie)
    if session is None:
        return None
    if session.set_cookies:
        set_set_cookies(scope, session.set_cookies)
    if session.claims is None:
        raise Refused(session.error or InvalidToken("The session is not valid."), session.set_cookies)
    return session.claims


async def frame_allowed(realtime: Realtime, scope: Any) -> int | None:
    """None if a publish or subscribe from this connection is within the rate limit, else the seconds to wait."""
    return retry_after(await realtime.rate_limits.check(scope))
