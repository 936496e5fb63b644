"""The example chat page: served in development with a CSP that allows its own script, absent in production."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from keel.main import create_app
from tests.conftest import Backend, make_settings
from tests.http.test_middleware import Client


async def test_the_example_page_and_its_files_are_served_in_development(client: Client) -> None:
    page = await client.get("/examples/chat")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/examples/chat.js">' in page.text
    assert "http" not in page.text.replace("HttpOnly", "")  # no external asset
    policies = page.headers.get_list("content-security-policy")
    assert any("script-src 'self'" in policy and "connect-src 'self'" in policy for policy in policies)
    assert page.headers["x-content-type-options"] == "nosniff"
    script = await client.get("/examples/chat.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "X-CSRF-Token" in script.text
    assert (await client.get("/examples/chat.css")).status_code == 200
    missing = await client.get("/examples/secrets.txt")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_production_serves_no_example_page(pg_url: str, redis_url: str) -> None:
    settings = make_settings(
        Backend("scaled", pg_url, redis_url),
        KEEL_ENV="production",
        KEEL_JWT_SECRET="x" * 48,
        KEEL_SMTP_URL="smtp://127.0.0.1:1",
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert (await client.get("/examples/chat")).status_code == 404
        assert (await client.get("/examples/chat.js")).status_code == 404
