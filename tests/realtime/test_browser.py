"""The example page in a real browser (Debian's chromium, driven by Playwright) against real `keel serve` processes.

A browser session survives a server restart: EventSource reconnects by itself with Last-Event-ID and the page's
WebSocket reconnects with `since`; either way every message published meanwhile arrives once, in order. A page
on another origin cannot use the session: its POST is refused by the CSRF check, its WebSocket at the handshake.
An expired session renewed on a WebSocket's 101 lands in the browser's cookie jar.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Cookie, Page

from tests.conftest import Backend
from tests.factories import PASSWORD
from tests.realtime.conftest import backend_env
from tests.servers import Server, free_port, keel_serve, sign_up

WAIT_MS = 30_000  # EventSource retries every 3 s, a restart takes a few


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def other_origin() -> Iterator[str]:
    """An empty page on another loopback port: an origin keel does not know."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def access_line(server: Server, *parts: str) -> str:
    """The server's log line holding every part, waited for: an access line is written after the response is
    sent, so a moment after the browser has it."""
    deadline = time.monotonic() + 5
    while True:
        for line in server.output().splitlines():
            if all(part in line for part in parts):
                return line
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)


def publish(url: str, token: str, channel: str, body: str) -> int:
    response = httpx.post(
        f"{url}/api/v1/channels/{channel}/messages",
        json={"body": body},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


def sign_in_and_open(page: Page, url: str, query: str = "") -> None:
    """The example page: sign in as ada, open #general, wait until it is live."""
    page.goto(f"{url}/examples/chat{query}")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[value=sign-in]")
    page.click("#channels li button", timeout=WAIT_MS)
    page.wait_for_function("() => document.querySelector('#status').textContent === 'live'", timeout=WAIT_MS)


def seen(page: Page) -> list[int]:
    seqs: list[int] = page.evaluate("() => window.keelChat.seqs")
    return seqs


def wait_for_count(page: Page, count: int) -> None:
    page.wait_for_function(f"() => window.keelChat.seqs.length >= {count}", timeout=WAIT_MS)


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_the_example_page_resumes_after_a_restart(
    backend: Backend, tmp_path: Path, browser: Browser, transport: str
) -> None:
    env = backend_env(backend)
    port = free_port()
    with keel_serve(env, tmp_path, port=port) as server:
        url = server.url
        bob = sign_up(url, "bob")["access_token"]
        sign_up(url, "ada")
        channel = httpx.post(
            f"{url}/api/v1/channels", json={"name": "general"}, headers={"Authorization": f"Bearer {bob}"}
        ).json()["id"]
        page = browser.new_page()
        sign_in_and_open(page, url, "?transport=ws" if transport == "ws" else "")
        for i in range(3):
            publish(url, bob, channel, f"live {i}")
        # the page posts too: fetch with the session cookie and X-CSRF-Token
        with page.expect_response(lambda r: r.url.endswith("/messages") and r.request.method == "POST") as posted:
            page.fill("#post input[name=body]", "from the page")
            page.press("#post input[name=body]", "Enter")
        assert posted.value.status == 201
        wait_for_count(page, 4)
    # the browser's server is down; another instance on the same database takes three messages
    with keel_serve(env, tmp_path) as other:
        for i in range(3):
            publish(other.url, bob, channel, f"while down {i}")
    with keel_serve(env, tmp_path, port=port) as server:
        wait_for_count(page, 7)
        for i in range(2):
            publish(server.url, bob, channel, f"after {i}")
        wait_for_count(page, 9)
        assert seen(page) == list(range(1, 10))  # every message once, in order
        texts = page.locator("#messages li").all_inner_texts()
        assert len(texts) == 9
        assert "from the page" in texts[3]
        if transport == "sse":
            # reconnected by the browser itself: the page never had to open a new EventSource
            assert page.evaluate("() => window.keelChat.reopenedByScript") == 0
        assert page.evaluate("() => window.keelChat.opened") >= 2


def test_a_page_on_another_origin_cannot_use_the_session(backend: Backend, tmp_path: Path, browser: Browser) -> None:
    with keel_serve(backend_env(backend), tmp_path) as server:
        url = server.url
        sign_up(url, "ada")
        bob = sign_up(url, "bob")["access_token"]
        channel = httpx.post(
            f"{url}/api/v1/channels", json={"name": "general"}, headers={"Authorization": f"Bearer {bob}"}
        ).json()["id"]
        context = browser.new_context()
        page = context.new_page()
        sign_in_and_open(page, url)  # ada is signed in: her cookies are in this browser

        # a page on another origin of the same site (cookies are sent to every port of a host, SameSite=Lax too),
        # served from loopback like keel: Chrome's local-network rules would otherwise refuse before keel could
        attacker = context.new_page()
        with other_origin() as evil:
            attacker.goto(f"{evil}/page")
        with attacker.expect_response(lambda r: r.url == f"{url}/api/v1/channels/{channel}/messages") as forged:
            attacker.evaluate(
                """([url, channel]) => fetch(`${url}/api/v1/channels/${channel}/messages`, {
                    method: "POST", mode: "no-cors", credentials: "include",
                    headers: {"Content-Type": "text/plain"}, body: JSON.stringify({body: "forged"}),
                }).catch(() => null)""",
                [url, channel],
            )
        assert forged.value.status == 403
        # the cookie came along (else 401 and no user in the access log), the CSRF header could not
        assert '"user_id":"' in access_line(server, "/messages", '"status":403')

        opened = attacker.evaluate(
            """(url) => new Promise((resolve) => {
                const socket = new WebSocket(url.replace("http://", "ws://") + "/ws");
                socket.onopen = () => resolve("open");
                socket.onclose = (event) => resolve(`closed ${event.code}`);
            })""",
            url,
        )
        assert opened == "closed 1006"  # refused at the handshake: never opened
        access_line(server, '"route":"/ws"', '"status":403')

        messages = httpx.get(
            f"{url}/api/v1/channels/{channel}/messages", headers={"Authorization": f"Bearer {bob}"}
        ).json()
        assert messages == []
        assert page.evaluate("() => window.keelChat.seqs") == []
        context.close()


def test_chromium_keeps_the_cookies_a_websocket_handshake_renewed(
    backend: Backend, tmp_path: Path, browser: Browser
) -> None:
    """An expired session renewed on a WebSocket's 101: Chromium stores the Set-Cookie of a handshake response, so
    the page needs no fetch before it opens a socket, and its next request uses the new cookies as they are."""
    ttl = 4  # seconds: long enough for the checks after the renewal to finish before the new token needs one
    with keel_serve(backend_env(backend, KEEL_ACCESS_TOKEN_TTL=f"{ttl}s"), tmp_path) as server:
        url = server.url
        sign_up(url, "ada")
        context = browser.new_context()
        page = context.new_page()
        devtools = context.new_cdp_session(page)  # Playwright shows no handshake headers; DevTools does
        devtools.send("Network.enable")
        handshakes: list[dict[str, Any]] = []
        devtools.on("Network.webSocketHandshakeResponseReceived", lambda event: handshakes.append(event["response"]))
        page.goto(f"{url}/api/v1/public")
        signed_in = page.evaluate(
            """(password) => fetch("/api/v1/auth/session", {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({username: "ada", password}),
            }).then((response) => response.status)""",
            PASSWORD,
        )
        assert signed_in == 204
        before = jar(context)
        time.sleep(ttl + 0.3)  # keel_session now holds an expired access token; keel_refresh is still good

        opened = page.evaluate(
            """() => new Promise((resolve) => {
                const socket = new WebSocket(location.origin.replace("http", "ws") + "/ws");
                socket.onopen = () => resolve("open");
                socket.onclose = (event) => resolve(`closed ${event.code}`);
            })"""
        )
        assert opened == "open"
        renewed = jar(context)
        # at once, well inside the renewed token's first three quarters, when a request would renew it again
        with page.expect_response(f"{url}/api/v1/protected") as protected:
            page.evaluate("() => fetch('/api/v1/protected')")

        deadline = time.monotonic() + 5
        while not handshakes:  # DevTools' event may trail the page's onopen
            assert time.monotonic() < deadline, "no handshake response seen"
            page.wait_for_timeout(20)
        (handshake,) = handshakes
        assert handshake["status"] == 101
        sent = {
            line.split("=", 1)[0]: line.split("=", 1)[1].split(";", 1)[0]
            for name, value in handshake["headers"].items()
            if name.lower() == "set-cookie"
            for line in value.split("\n")
        }
        assert sent.keys() == {"keel_session", "keel_refresh", "keel_csrf"}
        # the browser holds what the 101 sent: a new access token, the family's next refresh token, the same CSRF
        assert {name: cookie["value"] for name, cookie in renewed.items()} == sent
        assert renewed["keel_session"]["value"] != before["keel_session"]["value"]
        assert renewed["keel_refresh"]["value"] != before["keel_refresh"]["value"]
        assert renewed["keel_csrf"]["value"] == before["keel_csrf"]["value"]
        for name, http_only, same_site in (
            ("keel_session", True, "Lax"),
            ("keel_refresh", True, "Strict"),
            ("keel_csrf", False, "Lax"),
        ):
            cookie = renewed[name]
            assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == (
                http_only,
                same_site,
                "/",
                False,  # KEEL_ENV=development serves plain http
            ), name
            # Max-Age is the refresh TTL (30 days), counted again from the renewal
            assert cookie["expires"] > before[name]["expires"]
            assert abs(cookie["expires"] - time.time() - 30 * 86400) < 60, name

        # the next request authenticates with the renewed cookie as it is: no second renewal
        response = protected.value
        assert response.status == 200
        assert response.json()["username"] == "ada"
        assert f"keel_session={sent['keel_session']}" in response.request.all_headers()["cookie"]
        assert "set-cookie" not in response.all_headers()
        assert jar(context) == renewed
        context.close()


def jar(context: BrowserContext) -> dict[str, Cookie]:
    """The browser's cookies for keel, by name."""
    return {cookie["name"]: cookie for cookie in context.cookies()}
