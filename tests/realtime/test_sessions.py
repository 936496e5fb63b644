"""/ws and /events with a browser-session cookie (SPEC §4, §7, §8), on a real `keel serve`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Backend
from tests.factories import PASSWORD
from tests.realtime.conftest import EventReader, Live, backend_env, receive, refused, start_live, subscribe
from tests.servers import keel_serve


@contextmanager
def browser(live: Live) -> Iterator[httpx.Client]:
    """An HTTP client signed in with a browser session (its cookie jar holds the cookies)."""
    with httpx.Client(base_url=live.url) as client:
        response = client.post("/api/v1/auth/session", data={"username": "ada", "password": PASSWORD})
        assert response.status_code == 204, response.text
        yield client


def cookie_header(client: httpx.Client) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def own_origin(live: Live) -> str:
    return live.url  # http://127.0.0.1:<port>: what the page the server served would send


async def test_a_session_cookie_opens_a_websocket_from_the_own_origin(live: Live) -> None:
    with browser(live) as client:
        headers = {"Cookie": cookie_header(client), "Origin": own_origin(live)}
        async with connect(live.ws_url, additional_headers=headers) as ws:
            await subscribe(ws, live.channel)
            posted = live.post("hello")
            assert (await receive(ws))["message"] == posted


async def test_a_cross_origin_page_cannot_open_a_websocket_with_the_cookie(live: Live) -> None:
    with browser(live) as client:
        headers = {"Cookie": cookie_header(client), "Origin": "https://evil.example"}
        status, problem = await refused(live.ws_url, additional_headers=headers)
    assert status == 403
    assert problem["code"] == "http.origin_refused"


async def test_a_bearer_token_opens_a_websocket_from_any_origin(live: Live) -> None:
    # a token is not ambient authority: a page holding one was given it, so Origin does not matter
    async with connect(live.ws_url, additional_headers={**live.auth, "Origin": "https://elsewhere.example"}) as ws:
        await subscribe(ws, live.channel)


def test_a_session_cookie_opens_an_event_stream(live: Live) -> None:
    with browser(live) as client:
        headers = {"Cookie": cookie_header(client)}  # same-origin EventSource: browsers send no Origin
        with httpx.stream("GET", f"{live.url}/events", params={"channel": live.channel}, headers=headers) as response:
            assert response.status_code == 200
            reader = EventReader(response)
            assert reader.next().retry == 3000
            posted = live.post("hello")
            assert reader.next().message == posted
        cross = httpx.get(
            f"{live.url}/events",
            params={"channel": live.channel},
            headers={**headers, "Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        assert cross.json()["code"] == "http.origin_refused"


async def test_sign_out_closes_the_sessions_sockets_with_4401(live: Live) -> None:
    with browser(live) as client:
        headers = {"Cookie": cookie_header(client), "Origin": own_origin(live)}
        async with connect(live.ws_url, additional_headers=headers) as ws:
            await subscribe(ws, live.channel)
            started = time.monotonic()
            response = client.delete("/api/v1/auth/session", headers={"X-CSRF-Token": client.cookies["keel_csrf"]})
            assert response.status_code == 204
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401
            assert time.monotonic() - started < 5
        status, _ = await refused(live.ws_url, additional_headers=headers)
        assert status == 401


async def test_a_password_change_closes_browser_sockets_with_4401(live: Live) -> None:
    with browser(live) as client:
        headers = {"Cookie": cookie_header(client), "Origin": own_origin(live)}
        async with connect(live.ws_url, additional_headers=headers) as ws:
            await subscribe(ws, live.channel)
            change = await asyncio.to_thread(
                httpx.post,
                f"{live.url}/api/v1/users/me/password",
                json={"current_password": PASSWORD, "new_password": "another long secret"},
                headers=live.auth,
            )
            assert change.status_code == 204
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401


@pytest.fixture
def short_live(backend: Backend, tmp_path: Path) -> Iterator[Live]:
    with keel_serve(backend_env(backend, KEEL_ACCESS_TOKEN_TTL="2s"), tmp_path) as server:
        yield start_live(server)


def test_an_event_stream_renews_an_expired_session_by_itself(short_live: Live) -> None:
    """EventSource's reconnect cannot call anything first: the stream's own request renews the cookies."""
    live = short_live
    with browser(live) as client:
        old = client.cookies["keel_session"]
        time.sleep(2.2)
        with client.stream("GET", "/events", params={"channel": live.channel}) as response:
            assert response.status_code == 200
            renewed = response.headers.get_list("set-cookie")
            assert {line.split("=", 1)[0] for line in renewed} == {"keel_session", "keel_refresh", "keel_csrf"}
            reader = EventReader(response)
            assert reader.next().retry == 3000
            posted = live.post("after renewal")
            assert reader.next().message == posted
        assert client.cookies["keel_session"] != old
        assert client.get("/api/v1/protected").status_code == 200


async def test_a_websocket_handshake_renews_an_expired_session(short_live: Live) -> None:
    live = short_live
    with browser(live) as client:
        await asyncio.sleep(2.2)
        headers = {"Cookie": cookie_header(client), "Origin": own_origin(live)}
        async with connect(live.ws_url, additional_headers=headers) as ws:
            assert ws.response is not None
            renewed = ws.response.headers.get_all("set-cookie")
            assert {line.split("=", 1)[0] for line in renewed} == {"keel_session", "keel_refresh", "keel_csrf"}
            await subscribe(ws, live.channel)
