"""Browser sessions (SPEC §4): the cookies, their verification and renewal, the CSRF and Origin rules.

A browser session is a refresh family held in two HttpOnly cookies:

- `keel_session` (SameSite=Lax, Path=/): an access JWT like the one `/auth/token` returns, verified by the same
  TokenVerifier (claim cache and denylist), so a cookie costs a request what a bearer token costs and never a
  database read;
- `keel_refresh` (SameSite=Strict, Path=/): the family's refresh token. Path=/ and not /api/ because `/events`
  and `/ws` must renew too: EventSource reconnects by itself and cannot call anything first.

and `keel_csrf`, readable by scripts, the double-submit token for unsafe methods. Every cookie lives as long as
the refresh token (KEEL_REFRESH_TOKEN_TTL); the access JWT inside `keel_session` expires sooner. When it has
expired or is in the last quarter of its life, the request that carries it renews the session on the spot: the
refresh token is rotated (a database write, once per access TTL per browser) and new cookies ride on that
response. Concurrent renewals with the same refresh token share one rotation in a process; across processes
(two tabs, two instances) the refresh grace (KEEL_REFRESH_GRACE) gives the second one a sibling pair.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from litestar.datastructures import Cookie

from keel.errors import Forbidden, KeelError, Unavailable
from keel.identity.errors import InvalidToken
from keel.identity.tokens import Claims
from keel.identity.verifier import TokenVerifier
from keel.shared.errors import OUTAGES

SESSION_COOKIE: Final = "keel_session"
REFRESH_COOKIE: Final = "keel_refresh"
CSRF_COOKIE: Final = "keel_csrf"
CSRF_HEADER: Final = b"x-csrf-token"
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SESSION: Final = f"{SESSION_COOKIE}=".encode()
_REFRESH: Final = f"{REFRESH_COOKIE}=".encode()
_CSRF: Final = f"{CSRF_COOKIE}=".encode()

# refresh token → (access token, refresh token): accounts' rotation, handed in by the composition root
Renew = Callable[[str], Awaitable[tuple[str, str]]]


class CsrfFailed(Forbidden):
    code = "http.csrf_failed"
    title = "CSRF check failed"


class OriginRefused(Forbidden):
    code = "http.origin_refused"
    title = "Origin not allowed"


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of the cookie `name` (given with its "=", b"keel_session=") in a `Cookie` header, the first one as
    browsers order them (RFC 6265 §5.4), found without splitting the header: it also carries the application's own
    cookies, and this runs on every request the cookie authenticates."""
    at = header.find(name)
    while at > 0 and header[at - 1] not in b"; ":  # the tail of a longer name (my_keel_session=)
        at = header.find(name, at + 1)
    if at < 0:
        return None
    start = at + len(name)
    stop = header.find(b";", start)
    return (header[start:] if stop < 0 else header[start:stop]).strip()


class Session:
    """What the cookies of one request said: the caller (or why not), and any cookies to set on the response."""

    __slots__ = ("claims", "error", "set_cookies")

    def __init__(
        self,
        claims: Claims | None,
        error: KeelError | None = None,
        set_cookies: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.claims = claims
        self.error = error
        self.set_cookies = set_cookies


class SessionCookies:
    """Issues, verifies and renews browser-session cookies; one per app, built by the lifespan."""

    def __init__(
        self,
        verifier: TokenVerifier,
        renew: Renew,
        *,
        max_age: int,
        secure: bool,
        cors_origins: Iterable[str] = (),
    ) -> None:
        self._verifier = verifier
        self._renew = renew
        self.max_age = max_age  # KEEL_REFRESH_TOKEN_TTL in seconds
        self.secure = secure  # false only for KEEL_ENV=development, where http://127.0.0.1 must work
        # "*" grants no cookie-authenticated stream: it allows reading public answers, never using a session
        self._origins = frozenset(origin for origin in cors_origins if origin != "*")
        self._renewals: dict[str, asyncio.Future[tuple[str, str]]] = {}

    def cookies(self, access_token: str, refresh_token: str, csrf: str | None = None) -> list[Cookie]:
        """The three cookies of a session (a fresh CSRF token unless the browser's is kept)."""
        common = {"max_age": self.max_age, "path": "/", "secure": self.secure}
        return [
            Cookie(key=SESSION_COOKIE, value=access_token, httponly=True, samesite="lax", **common),  # type: ignore[arg-type]
            Cookie(key=REFRESH_COOKIE, value=refresh_token, httponly=True, samesite="strict", **common),  # type: ignore[arg-type]
            Cookie(key=CSRF_COOKIE, value=csrf or secrets.token_urlsafe(32), samesite="lax", **common),  # type: ignore[arg-type]
        ]

    def cleared(self) -> list[Cookie]:
        """Cookies that delete the session's from the browser."""
        return [
            Cookie(key=name, value="", max_age=0, path="/", secure=self.secure, httponly=name != CSRF_COOKIE)
            for name in (SESSION_COOKIE, REFRESH_COOKIE, CSRF_COOKIE)
        ]

    def fresh(self, header: bytes) -> Claims | None:
        """The hot path: the claims of a valid `keel_session` that needs no renewal yet, else None (no cookie, or
        one for `authenticate` to renew or refuse). Costs what a bearer token costs: the verifier's cache."""
        access = cookie_value(header, _SESSION)
        if not access:
            return None
        try:
            claims = self._verifier.verify(access.decode("latin-1"))
        except InvalidToken:
            return None
        if time.time() < claims.expires_at - (claims.expires_at - claims.issued_at) / 4:
            return claims
        return None

    async def authenticate(self, header: bytes) -> Session | None:
        """The session the `Cookie` header carries, renewed when its access token is (nearly) spent; None if the
        header holds no session cookie."""
        access = (cookie_value(header, _SESSION) or b"").decode("latin-1")
        refresh = (cookie_value(header, _REFRESH) or b"").decode("latin-1")
        if not access and not refresh:
            return None
        claims: Claims | None = None
        error: KeelError | None = None
        if access:
            try:
                claims = self._verifier.verify(access)
            except InvalidToken as exc:
                error = exc
            else:
                lifetime = claims.expires_at - claims.issued_at
                if not refresh or time.time() < claims.expires_at - lifetime / 4:
                    return Session(claims)
        if not refresh:
            return Session(None, error or InvalidToken("The session has expired; sign in again."))
        try:
            access, refresh = await self._rotate(refresh)
            renewed = self._verifier.verify(access)
        except OUTAGES:
            if claims is not None:  # still valid: renew on a later request
                return Session(claims)
            return Session(None, Unavailable("The session could not be renewed; retry shortly.", retry_after=2))
        except KeelError as exc:  # spent beyond the grace, revoked, expired: the session is over
            if claims is not None and not self._verifier.is_revoked(claims):
                return Session(claims)  # another tab renewed it already; this access token is still good
            cleared = [cookie.to_encoded_header() for cookie in self.cleared()]
            return Session(None, InvalidToken(f"The session has ended: {exc.detail}"), cleared)
        csrf = cookie_value(header, _CSRF)  # kept: the page's copy of it stays right
        cookies = self.cookies(access, refresh, csrf.decode("latin-1") if csrf else None)
        return Session(renewed, None, [cookie.to_encoded_header() for cookie in cookies])

    async def _rotate(self, refresh: str) -> tuple[str, str]:
        """One rotation per refresh token at a time in this process: the requests of a page that all carry the
        same spent access cookie share it (and its new cookies) instead of racing each other into the grace."""
        renewal = self._renewals.get(refresh)
        if renewal is None:
            renewal = asyncio.ensure_future(self._renew(refresh))
            self._renewals[refresh] = renewal
            renewal.add_done_callback(lambda _: self._renewals.pop(refresh, None))
        return await asyncio.shield(renewal)

    def origin_allowed(self, scope_scheme: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether a cookie-authenticated stream may open from the request's Origin: none (not a cross-origin
        browser request), the server's own (its Host, with the request's scheme or https: behind a proxy that
        terminates TLS the request arrives as http), or one listed in KEEL_CORS_ORIGINS."""
        origin: bytes | None = None
        host: bytes | None = None
        for name, value in headers:
            if name == b"origin":
                origin = value
            elif name == b"host":
                host = value
        if origin is None:
            return True
        text = origin.decode("latin-1")
        if text in self._origins:
            return True
        if host is None:
            return False
        own = host.decode("latin-1")
        return text == f"https://{own}" or (scope_scheme in ("http", "ws") and text == f"http://{own}")


def check_csrf(cookie_header: bytes, headers: Iterable[tuple[bytes, bytes]]) -> CsrfFailed | None:
    """None when X-CSRF-Token equals the keel_csrf cookie (compared in constant time), else why not."""
    sent = next((value for name, value in headers if name == CSRF_HEADER), None)
    if sent is None:
        return CsrfFailed("A request authenticated by the session cookie must send X-CSRF-Token.")
    expected = cookie_value(cookie_header, _CSRF)
    if not expected or not hmac.compare_digest(sent, expected):
        return CsrfFailed("X-CSRF-Token does not match the keel_csrf cookie.")
    return None
