"""The example page's "forgot password" in a real browser: ask for the mail, follow its link, set a new password."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser

from tests.conftest import Backend
from tests.mail.smtp import SmtpServer, token_in
from tests.realtime.conftest import backend_env
from tests.servers import free_port, keel_serve, sign_up

WAIT_MS = 10_000


def test_forgot_password_on_the_example_page(backend: Backend, tmp_path: Path, browser: Browser) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        SmtpServer() as smtp,
        keel_serve(backend_env(backend, KEEL_SMTP_URL=smtp.url, KEEL_PUBLIC_URL=url), tmp_path, port=port),
    ):
        sign_up(url, "ada")
        page = browser.new_page()
        page.goto(f"{url}/examples/chat")
        page.click("#forgot")
        page.fill("#forgot-password input[name=email]", "ada@example.com")
        page.click("#forgot-password button[type=submit]")
        page.wait_for_function("() => document.querySelector('#notice').textContent.includes('on its way')")
        deadline = time.monotonic() + 10
        while smtp.inbox.count() == 0:
            assert time.monotonic() < deadline, "no mail arrived"
            time.sleep(0.05)
        token = token_in(smtp.inbox.messages[0], "password-reset")
        page = browser.new_page()  # the mail's link opens a new tab
        page.goto(f"{url}/examples/chat#password-reset={token}")
        page.fill("#new-password input[name=new_password]", "a brand new secret")
        page.click("#new-password button[type=submit]", timeout=WAIT_MS)
        page.wait_for_function("() => document.querySelector('#notice').textContent.includes('password is changed')")
        assert token not in page.url  # the token left the address bar
        assert page.text_content("#error") == ""
        login = httpx.post(f"{url}/api/v1/auth/token", data={"username": "ada", "password": "a brand new secret"})
        assert login.status_code == 200
