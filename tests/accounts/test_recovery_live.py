"""Recovery by mail against real `keel serve` processes: sockets closed with 4401 by a reset, on every instance; two
instances sending each mail once; the per-address budget behind a proxy; no secret from a mail in any log line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Backend
from tests.mail.smtp import SmtpServer, token_in
from tests.realtime.conftest import backend_env, receive, send
from tests.servers import Server, keel_serve, scaled_env, sign_up

NEW_PASSWORD = "a brand new secret"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


async def assert_closed_with_4401(ws: object, started: float) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws, within=5)  # type: ignore[arg-type]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert time.monotonic() - started < 5


def no_secret_logged(servers: list[Server], *secrets: str) -> None:
    for server in servers:
        output = server.output()
        assert output  # the server did log
        for secret in secrets:
            assert secret not in output


async def test_a_reset_closes_the_accounts_open_sockets_with_4401(
    backend: Backend, smtp: SmtpServer, tmp_path: Path
) -> None:
    with keel_serve(backend_env(backend, KEEL_SMTP_URL=smtp.url), tmp_path) as server:
        tokens = sign_up(server.url)
        async with connect(
            ws_url(server), additional_headers={"Authorization": f"Bearer {tokens['access_token']}"}
        ) as ws:
            await send(ws, type="ping")
            assert (await receive(ws))["type"] == "pong"
            async with httpx.AsyncClient(base_url=server.url) as client:
                reset = await client.post("/api/v1/auth/password-reset", json={"email": "ada@example.com"})
                assert reset.status_code == 202
                token = token_in((await smtp.inbox.wait_for(1))[0], "password-reset")
                started = time.monotonic()
                body = {"token": token, "new_password": NEW_PASSWORD}
                assert (await client.post("/api/v1/auth/password-reset/confirm", json=body)).status_code == 204
            await assert_closed_with_4401(ws, started)
    no_secret_logged([server], token, NEW_PASSWORD)


@pytest.fixture
def scaled(pg_url: str, redis_url: str, smtp: SmtpServer) -> dict[str, str | None]:
    return scaled_env(pg_url, redis_url, KEEL_SMTP_URL=smtp.url)


async def test_two_instances_send_each_mail_once_and_a_reset_on_one_closes_sockets_on_the_other(
    scaled: dict[str, str | None], smtp: SmtpServer, tmp_path: Path
) -> None:
    env = scaled
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        tokens = sign_up(a.url)
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with connect(ws_url(b), additional_headers=auth) as ws:
            await send(ws, type="ping")
            assert (await receive(ws))["type"] == "pong"
            async with httpx.AsyncClient() as client:
                for i in range(12):  # both instances queue, both send: every mail exactly once
                    server = (a, b)[i % 2]
                    response = await client.post(f"{server.url}/api/v1/users/me/email-verification", headers=auth)
                    assert response.status_code == 202
                reset = await client.post(f"{b.url}/api/v1/auth/password-reset", json={"email": "ada@example.com"})
                assert reset.status_code == 202
                mails = await smtp.inbox.wait_for(13)
                await asyncio.sleep(1)  # room for a duplicate to arrive
                assert smtp.inbox.count() == 13
                assert len({m["Message-ID"] for m in mails}) == 13
                [reset_mail] = [m for m in mails if "password-reset=" in str(m.get_body(("plain",)))]
                token = token_in(reset_mail, "password-reset")
                started = time.monotonic()
                body = {"token": token, "new_password": NEW_PASSWORD}
                assert (await client.post(f"{a.url}/api/v1/auth/password-reset/confirm", json=body)).status_code == 204
            await assert_closed_with_4401(ws, started)
    verification_tokens = [token_in(m, "verify-email") for m in mails if m is not reset_mail]
    no_secret_logged([a, b], token, NEW_PASSWORD, *verification_tokens)


async def test_past_an_addresss_budget_nothing_more_is_mailed_yet_every_answer_is_202(
    backend: Backend, smtp: SmtpServer, tmp_path: Path
) -> None:
    # behind a trusted proxy, so each request can come from a client address of its own
    env = backend_env(
        backend, KEEL_SMTP_URL=smtp.url, KEEL_AUTH_RATE_LIMIT="1/min burst 3", KEEL_TRUSTED_PROXIES="127.0.0.1/32"
    )
    with keel_serve(env, tmp_path) as server:
        sign_up(server.url, "ada")
        sign_up(server.url, "bob")  # no auth policy on sign-up or the token endpoint's own IP bucket matter here
        answers = []
        async with httpx.AsyncClient(base_url=server.url) as client:
            for i in range(5):  # five clients, one address: the address's budget is 3
                response = await client.post(
                    "/api/v1/auth/password-reset",
                    json={"email": "ada@example.com"},
                    headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
                )
                answers.append((response.status_code, response.json()))
            other = await client.post(
                "/api/v1/auth/password-reset",
                json={"email": "bob@example.com"},
                headers={"X-Forwarded-For": "192.0.2.9"},
            )
            # the same answer as for an address within its budget, or for one with no account
            assert answers == [(202, other.json())] * 5
            assert other.status_code == 202
            await smtp.inbox.wait_for(4)
            await asyncio.sleep(0.5)
            assert [m["To"] for m in smtp.inbox.messages].count("ada@example.com") == 3
            assert smtp.inbox.count() == 4
            # one client's own budget is per IP: a 429 there says nothing about any address
            same_ip = {"X-Forwarded-For": "203.0.113.7"}
            statuses = [
                (
                    await client.post(
                        "/api/v1/auth/password-reset", json={"email": f"x{i}@example.com"}, headers=same_ip
                    )
                ).status_code
                for i in range(4)
            ]
            assert statuses == [202, 202, 202, 429]
