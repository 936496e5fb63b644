from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import IN_CI
from tests.servers import keel_serve, run_keel

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


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_swagger_ui_renders_in_a_real_browser(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it", pytrace=False)
        pytest.skip("chromium not installed (apt-get install chromium)")
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    with keel_serve({}, tmp_path) as server:
        assert httpx.get(f"{server.url}/swagger-ui").status_code == 200
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'ud'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"{server.url}/swagger-ui",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    dom = result.stdout
    # Swagger UI fetched the document and rendered keel's operations from it
    assert 'class="swagger-ui' in dom, result.stderr[-2000:]
    assert "/api/v1/public" in dom
    assert "/readyz" in dom
