"""The session-cookie pieces on their own: parsing, CSRF, the Origin rule and shared renewals."""

from __future__ import annotations

import asyncio

from keel.http.sessions import SessionCookies, check_csrf, cookie_value
from keel.identity.denylist import Denylist
from keel.identity.tokens import Keyring
from keel.identity.verifier import TokenVerifier
from keel.shared.broker import InProcessBroker
from tests.conftest import TEST_JWT_SECRET


def test_a_cookie_is_found_by_its_whole_name_and_the_first_wins() -> None:
    header = b"my_keel_session=no; theme=dark; keel_session=a.b.c;keel_csrf=x ; keel_session=other; keel_refresh=r"
    assert cookie_value(header, b"keel_session=") == b"a.b.c"
    assert cookie_value(header, b"keel_csrf=") == b"x"
    assert cookie_value(header, b"keel_refresh=") == b"r"
    assert cookie_value(b"keel_sessionx=1; theme=dark", b"keel_session=") is None
    assert cookie_value(b"theme=dark;keel_session=", b"keel_session=") == b""
    assert cookie_value(b"a=keel_session=x; b_keel_session=y", b"keel_session=") is None


def test_csrf_needs_the_header_equal_to_the_cookie() -> None:
    cookie = b"keel_session=a.b.c; keel_csrf=token"
    assert check_csrf(cookie, [(b"x-csrf-token", b"token")]) is None
    assert check_csrf(cookie, [(b"x-csrf-token", b"tokem")]) is not None
    assert check_csrf(cookie, []) is not None
    assert check_csrf(b"keel_session=a.b.c", [(b"x-csrf-token", b"")]) is not None  # no cookie matches nothing


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
    assert cookies.origin_allowed("ws", [host, (b"origin", b"https://keel.example:3000")])  # TLS ended at a proxy
    assert not cookies.origin_allowed("wss", [host, (b"origin", b"http://keel.example:3000")])  # a downgrade
    assert not cookies.origin_allowed("ws", [host, (b"origin", b"http://other.example:3000")])
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
