from __future__ import annotations

import json
from pathlib import Path

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from playwright.sync_api import Browser, expect

from tests.conftest import BROWSER_HOST
from tests.factories import PASSWORD
from tests.servers import keel_serve, run_keel, sign_up

Client = AsyncTestClient[Litestar]


async def test_openapi_document(client: Client) -> None:
    response = await client.get("/api-docs/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"] == "keel"
    assert document["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    operation_ids = [
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(operation_ids) == len(set(operation_ids))
    assert document["paths"]["/api/v1/users"]["post"]["operationId"] == "v1_users_register"
    assert document["paths"]["/api/v2/users"]["post"]["operationId"] == "users_register"
    assert document["paths"]["/api/v2/channels/{channel_id}/messages"]["get"]["operationId"] == "channels_list_messages"
    # one tag per domain, so Swagger UI lists each operation once
    domains = {tag["name"] for tag in document["tags"]}
    assert domains == {"auth", "users", "channels", "realtime", "ops"}
    for path, item in document["paths"].items():
        for op in item.values():
            if isinstance(op, dict) and not path.startswith("/test/"):
                (tag,) = op.get("tags", [None])
                assert tag in domains, op["operationId"]


async def test_swagger_ui_page_uses_only_local_assets(client: Client) -> None:
    page = await client.get("/swagger-ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN, no absolute URL
    for asset in (
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "keel-init.js",
        "favicon-32x32.png",
        "oauth2-redirect.html",
        "LICENSE",
    ):
        response = await client.get(f"/swagger-ui/assets/{asset}")
        assert response.status_code == 200, asset
        assert len(response.content) > 50


def test_swagger_ui_authorizes_with_the_password_flow_and_tries_an_operation(tmp_path: Path, browser: Browser) -> None:
    """Swagger UI in Chromium: every request stays on keel's origin, Authorize logs in through the OAuth2 password
    flow against /auth/token, and "Try it out" sends the token it got."""
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    with keel_serve({}, tmp_path) as server:
        tokens = sign_up(server.url, "ada", PASSWORD)
        me = httpx.get(f"{server.url}/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert me.status_code == 200, me.text
        # under a name that is not loopback's: Swagger UI treats localhost and 127.0.0.1 apart (its validator badge)
        origin = server.url.replace("127.0.0.1", BROWSER_HOST)
        context = browser.new_context()
        requested: list[str] = []
        context.on("request", lambda request: requested.append(request.url))
        page = context.new_page()
        page.goto(f"{origin}/swagger-ui")

        page.click(".scheme-container button.authorize")
        oauth = page.locator(".auth-container", has_text="OAuth2Password")
        oauth.locator("#oauth_username").fill("ada")
        oauth.locator("#oauth_password").fill(PASSWORD)
        with page.expect_response(f"{origin}/api/v1/auth/token") as token:
            oauth.locator("button.authorize").click()
        assert token.value.status == 200, token.value.text()
        sent = token.value.request  # the OAuth2 form, with empty client credentials in a header keel ignores
        assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
        assert sent.headers["authorization"] == "Basic Og=="  # base64(":")
        expect(oauth.get_by_text("Authorized")).to_be_visible()
        oauth.locator("button.btn-done").click()

        # found by the id Swagger UI derives from tag and operationId, not by summary text
        operation = page.locator("#operations-users-v1_users_me")
        operation.locator(".opblock-summary-control").click()
        operation.locator(".try-out__btn").click()
        with page.expect_response(f"{origin}/api/v1/users/me") as answered:
            operation.locator("button.execute").click()
        assert answered.value.request.headers["authorization"] == f"Bearer {token.value.json()['access_token']}"
        panel = operation.locator(".live-responses-table")
        expect(panel.locator("tbody .response-col_status")).to_have_text("200")
        assert json.loads(panel.locator("tbody .response-col_description pre").first.inner_text()) == me.json()
        context.close()
    assert requested, "the page made no request at all"
    assert [url for url in requested if not url.startswith(f"{origin}/")] == []
