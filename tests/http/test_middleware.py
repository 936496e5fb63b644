from __future__ import annotations

import re

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.http.middleware import edge_headers, request_id_of
from keel.main import create_app
from tests.conftest import Backend, make_settings

Client = AsyncTestClient[Litestar]
ALLOWED = "https://app.example"


async def test_sane_request_id_is_echoed(client: Client) -> None:
    response = await client.get("/healthz", headers={"x-request-id": "abc.DEF_123-xyz"})
    assert response.headers["x-request-id"] == "abc.DEF_123-xyz"


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "semi;colon", "<script>", ""])
async def test_insane_request_id_is_replaced(client: Client, sent: str) -> None:
    response = await client.get("/healthz", headers={"x-request-id": sent})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_request_id_is_generated_when_absent(client: Client) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_request_id_boundary() -> None:
    assert request_id_of(b"a" * 128) == "a" * 128
    assert request_id_of(b"a" * 129) != "a" * 129
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_of(b"bad id"))


def test_the_edge_reads_the_first_of_each_header_it_wants() -> None:
    headers = [(b"origin", b"https://a"), (b"x-request-id", b"r1"), (b"origin", b"https://b"), (b"accept", b"*/*")]
    assert edge_headers(headers) == {b"origin": b"https://a", b"x-request-id": b"r1"}


async def test_security_headers_on_every_response(client: Client) -> None:
    for path in ("/healthz", "/api/v1/public", "/missing"):
        headers = (await client.get(path)).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]


async def test_cors_preflight_from_an_allowed_origin(client: Client) -> None:
    response = await client.options(
        "/api/v1/public",
        headers={
            "origin": ALLOWED,
            "access-control-request-method": "POST",
            "access-control-request-headers": "Authorization, Content-Type, X-CSRF-Token",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"]
    assert "x-csrf-token" in response.headers["access-control-allow-headers"]
    assert response.headers["access-control-allow-credentials"] == "true"  # a listed origin may send the cookie
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        ("https://evil.example", "GET", ""),
        (ALLOWED, "TRACE", ""),
        (ALLOWED, "GET", "X-Custom-Thing"),
    ],
)
async def test_cors_preflight_refused(client: Client, origin: str, method: str, headers: str) -> None:
    response = await client.options(
        "/api/v1/public",
        headers={"origin": origin, "access-control-request-method": method, "access-control-request-headers": headers},
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "http.cors_rejected"
    assert "access-control-allow-origin" not in response.headers


async def test_cors_headers_on_requests_from_an_allowed_origin_only(client: Client) -> None:
    allowed = await client.get("/api/v1/public", headers={"origin": ALLOWED})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "X-Request-ID" in allowed.headers["access-control-expose-headers"]
    assert allowed.headers["access-control-allow-credentials"] == "true"
    denied = await client.get("/api/v1/public", headers={"origin": "https://evil.example"})
    assert denied.status_code == 200
    assert "access-control-allow-origin" not in denied.headers
    assert "access-control-allow-credentials" not in denied.headers


async def test_any_origin_is_never_allowed_credentials(backend: Backend) -> None:
    app = create_app(make_settings(backend, KEEL_CORS_ORIGINS="*"))
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/api/v1/public", headers={"origin": "https://anyone.example"})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        preflight = await client.options(
            "/api/v1/public",
            headers={"origin": "https://anyone.example", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 204
        assert "access-control-allow-credentials" not in preflight.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_headers_an_inner_layer_adds_reach_the_response_once(method: str) -> None:
    """The rate limiter hands its headers to the edge (one send wrapper for both): they must arrive, HEAD included,
    and the edge's own headers with them."""
    from typing import Any

    from litestar.types import Receive, Scope, Send

    from keel.http.middleware import EdgeMiddleware
    from keel.http.scope import add_response_headers

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        add_response_headers(scope, [(b"ratelimit", b'"default";r=9;t=1')])
        add_response_headers(scope, [(b"x-second", b"2")])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    edge = EdgeMiddleware(inner, [ALLOWED])
    scope = {"type": "http", "method": method, "path": "/x", "headers": [(b"origin", ALLOWED.encode())]}
    await edge(scope, receive, send)  # type: ignore[arg-type]
    names = [name for name, _ in sent[0]["headers"]]
    assert names.count(b"ratelimit") == 1
    assert names.count(b"x-second") == 1
    assert names.count(b"x-request-id") == 1
    assert dict(sent[0]["headers"])[b"access-control-allow-origin"] == ALLOWED.encode()
    assert [m.get("body") for m in sent[1:]] == [b"" if method == "HEAD" else b"ok"]
