"""The session-cookie pieces on their own: parsing, CSRF, the Origin rule and shared renewals."""

from __future__ import annotations

import asyncio

from keel.http.sessions import SessionCookies, check_csrf, session_cookies
from keel.identity.denylist import Denylist
from keel.identity.tokens import Keyring
from keel.identity.verifier import TokenVerifier
from keel.shared.broker import InProcessBroker
from tests.conftest import TEST_JWT_SECRET


def test_only_keels_cookies_are_read_and_the_first_wins() -> None:
    header = b"theme=dark; keel_session=a.b.c;keel_csrf=x; keel_session=other; keel_refresh=r"
    assert session_cookies(header) == {"keel_session": "a.b.c", "keel_csrf": "x", "keel_refresh": "r"}
    assert session_cookies(b"theme=dark") == {}


def test_csrf_needs_the_header_equal_to_the_cookie() -> None:
    assert check_csrf("token", [(b"x-csrf-token", b"token")]) is None
    assert check_csrf("token", [(b"x-csrf-token", b"tokem")]) is not None
    assert check_csrf("token", []) is not None
    assert check_csrf("", [(b"x-csrf-token", b"")]) is not None  # a missing cookie matches nothing


def cookies_with(renew: object, origins: tuple[str, ...] = ()) -> SessionCookies:
    keyring = Keyring.hs256(TEST_JWT_SECRET.encode(), issuer="keel", audience="keel-api")
    verifier = TokenVerifier(keyring, Denylist(InProcessBroker(), None))  # type: ignore[arg-type]
    return SessionCookies(verifier, renew, max_age=60, secure=False, cors_origins=origins)  # type: ignore[arg-type]


def test_the_origin_rule() -> None:
    cookies = cookies_with(None, ("https://app.example", "*"))
    host = (b"host", b"keel.example:3000")
    assert cookies.origin_allowed("http", [host])  # no Origin: not a cross-origin browser request
    assert cookies.origin_allowed("ws", [host, (b"origin", b"http://keel.example:3000")])
    assert cookies.origin_allowed("wss", [host, (b"origin", b"https://keel.example:3000")])
    assert not cookies.origin_allowed("ws", [host, (b"origin", b"https://keel.example:3000")])  # another scheme
    assert cookies.origin_allowed("http", [host, (b"origin", b"https://app.example")])
    assert not cookies.origin_allowed("http", [host, (b"origin", b"https://evil.example")])  # "*" grants no cookie


async def test_concurrent_renewals_of_one_refresh_token_share_one_rotation() -> None:
    calls = []

    async def renew(refresh: str) -> tuple[str, str]:
        calls.append(refresh)
        await asyncio.sleep(0.05)
        return "access", f"{refresh}-next"

    cookies = cookies_with(renew)
    results = await asyncio.gather(*(cookies._rotate("r1") for _ in range(5)))
    assert results == [("access", "r1-next")] * 5
    assert calls == ["r1"]
    await cookies._rotate("r1")  # once done, a later one rotates again (the grace decides then)
    assert calls == ["r1", "r1"]
