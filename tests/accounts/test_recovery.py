"""Password reset and email verification by mail (SPEC §4), end to end through a real SMTP server, on both backends."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from keel import db
from keel.accounts.models import MailedToken
from keel.accounts.service import token_digest
from keel.db import utcnow
from keel.main import create_app
from tests.conftest import Backend, make_settings
from tests.factories import PASSWORD, Client, bearer, log_in, register
from tests.mail.smtp import SmtpServer, token_in

NEW_PASSWORD = "a brand new secret"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def client(backend: Backend, smtp: SmtpServer) -> AsyncIterator[Client]:
    settings = make_settings(backend, KEEL_SMTP_URL=smtp.url, KEEL_PUBLIC_URL="https://keel.example.com")
    async with AsyncTestClient(app=create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


async def reset_token(client: Client, smtp: SmtpServer, email: str = "ada@example.com") -> str:
    before = smtp.inbox.count()
    response = await client.post("/api/v1/auth/password-reset", json={"email": email})
    assert response.status_code == 202, response.text
    return token_in((await smtp.inbox.wait_for(before + 1))[-1], "password-reset")


async def test_a_reset_sets_the_new_password_and_ends_every_session(client: Client, smtp: SmtpServer) -> None:
    await register(client, "ada", "Ada@Example.com")
    sessions = [await log_in(client), await log_in(client)]
    token = await reset_token(client, smtp, "ada@EXAMPLE.com")  # any case of the address finds the account
    [mail] = smtp.inbox.messages
    assert mail["To"] == "Ada@example.com"  # as stored: email-validator lower-cases the domain
    page = mail.get_body(("html",))
    assert page is not None
    assert f"https://keel.example.com/examples/chat#password-reset={token}" in page.get_content()
    assert len(token) >= 43  # 256 bits, URL-safe

    confirmed = await client.post(
        "/api/v2/auth/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert confirmed.status_code == 204, confirmed.text
    refused = await client.post("/api/v1/auth/token", data={"username": "ada", "password": PASSWORD})
    assert refused.status_code == 401
    for tokens in sessions:
        assert (await client.get("/api/v1/users/me", headers=bearer(tokens))).status_code == 401
        refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 401
    me = await client.get("/api/v1/users/me", headers=bearer(await log_in(client, "ada", NEW_PASSWORD)))
    assert me.json()["email_verified"] is True  # the mail was read: the address is proven
    again = await client.post("/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": "x" * 12})
    assert again.status_code == 400
    assert again.json()["code"] == "accounts.reset_token_invalid"


async def test_expired_altered_unknown_and_foreign_tokens_get_400(
    client: Client, smtp: SmtpServer, backend: Backend
) -> None:
    await register(client, "ada")
    tokens = await log_in(client)
    expired, current = await reset_token(client, smtp), await reset_token(client, smtp)
    engine = db.create_engine(backend.database_url)  # the app's own lives on the test client's loop
    try:
        async with db.create_sessionmaker(engine)() as session:
            past = utcnow() - timedelta(seconds=1)
            digest = token_digest(expired)
            await session.execute(update(MailedToken).where(MailedToken.token_hash == digest).values(expires_at=past))
            await session.commit()
    finally:
        await engine.dispose()
    assert (await client.post("/api/v1/users/me/email-verification", headers=bearer(tokens))).status_code == 202
    verification = token_in((await smtp.inbox.wait_for(3))[-1], "verify-email")
    altered = current[:-1] + ("A" if current[-1] != "A" else "B")
    for token in (expired, altered, "never-issued", verification):
        body = {"token": token, "new_password": NEW_PASSWORD}
        response = await client.post("/api/v1/auth/password-reset/confirm", json=body)
        assert response.status_code == 400, token
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "accounts.reset_token_invalid"
    refused = await client.post("/api/v1/auth/verify-email", json={"token": current})  # a reset token verifies nothing
    assert (refused.status_code, refused.json()["code"]) == (400, "accounts.verification_token_invalid")
    # none of that spent the live token
    body = {"token": current, "new_password": NEW_PASSWORD}
    assert (await client.post("/api/v1/auth/password-reset/confirm", json=body)).status_code == 204


async def test_verification_proves_the_address_once(client: Client, smtp: SmtpServer) -> None:
    await register(client, "ada")
    auth = bearer(await log_in(client))
    assert (await client.get("/api/v1/users/me", headers=auth)).json()["email_verified"] is False
    assert (await client.post("/api/v2/users/me/email-verification", headers=auth)).status_code == 202
    [mail] = await smtp.inbox.wait_for(1)
    assert mail["Subject"] == "Confirm your email address for keel"
    token = token_in(mail, "verify-email")
    assert (await client.post("/api/v1/auth/verify-email", json={"token": token})).status_code == 204
    assert (await client.get("/api/v1/users/me", headers=auth)).json()["email_verified"] is True
    again = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert (again.status_code, again.json()["code"]) == (400, "accounts.verification_token_invalid")
    anonymous = await client.post("/api/v1/users/me/email-verification")
    assert anonymous.status_code == 401


async def test_an_unknown_address_gets_the_same_answer_in_similar_time(client: Client, smtp: SmtpServer) -> None:
    await register(client, "ada")

    async def timed(email: str) -> tuple[float, int, bytes, str]:
        started = time.perf_counter()
        response = await client.post("/api/v1/auth/password-reset", json={"email": email})
        return time.perf_counter() - started, response.status_code, response.content, response.headers["content-type"]

    known, unknown = [], []
    for i in range(16):  # interleaved, so load on the machine falls on both alike
        known.append(await timed("ada@example.com"))
        unknown.append(await timed(f"nobody{i}@example.com"))
    assert {answer[1:] for answer in known} == {answer[1:] for answer in unknown}  # status, body, media type
    median_known = statistics.median(a[0] for a in known)
    median_unknown = statistics.median(a[0] for a in unknown)
    # the work differs by two rows inserted against one no-op update: far below what a network shows
    assert abs(median_known - median_unknown) < max(0.01, 0.5 * max(median_known, median_unknown)), (
        median_known,
        median_unknown,
    )
    await smtp.inbox.wait_for(16)  # and only the known address got mail
    assert {m["To"] for m in smtp.inbox.messages} == {"ada@example.com"}


async def test_without_smtp_development_writes_mail_to_var_mail(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    async with AsyncTestClient(app=create_app(make_settings(backend)), base_url="http://127.0.0.1") as client:
        await register(client, "ada")
        assert (await client.post("/api/v1/auth/password-reset", json={"email": "ada@example.com"})).status_code == 202
        for _ in range(100):
            if files := list((tmp_path / "var" / "mail").glob("*.eml")):
                break
            await asyncio.sleep(0.05)
    [path] = files
    token = path.read_text().split("#password-reset=")[1][:43]
    written = [r.getMessage() for r in caplog.records if r.name == "keel.mail"]
    assert written == [f"mail written to {Path('var') / 'mail' / path.name}"]
    assert not any(token in r.getMessage() for r in caplog.records)
