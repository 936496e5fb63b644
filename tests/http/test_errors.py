from __future__ import annotations

import logging

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.http.conftest import MAX_BODY

Client = AsyncTestClient[Litestar]


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert body["code"] == code
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def test_unknown_route_is_problem_404(client: Client) -> None:
    response = await client.get("/no/such/route")
    assert_problem(response, 404, "http.not_found")
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_wrong_method_is_problem_405_with_allow(client: Client) -> None:
    response = await client.delete("/healthz")
    assert_problem(response, 405, "http.method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_body_over_the_limit_is_413(client: Client) -> None:
    response = await client.post(
        "/test/widgets", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "http.payload_too_large")


async def test_chunked_body_over_the_limit_is_413_before_it_is_read_in_full(app: Litestar) -> None:
    chunk, chunks_sent, sent = b" " * 1000, 0, []

    async def receive() -> dict[str, object]:
        nonlocal chunks_sent
        chunks_sent += 1
        return {"type": "http.request", "body": chunk, "more_body": chunks_sent < 100}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/test/widgets",
        "raw_path": b"/test/widgets",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    body = sent[1]["body"]
    assert isinstance(body, bytes)
    assert msgspec.json.decode(body)["code"] == "http.payload_too_large"
    assert chunks_sent <= MAX_BODY // len(chunk) + 1  # stopped reading at the limit, not after 100 chunks


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_body_that_is_not_json_is_415(client: Client, content_type: str) -> None:
    response = await client.post("/test/widgets", content=b'{"name": "a"}', headers={"content-type": content_type})
    assert_problem(response, 415, "http.unsupported_media_type")


async def test_json_with_parameters_and_json_suffix_is_accepted(client: Client) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post("/test/widgets", content=b'{"name": "a"}', headers={"content-type": content_type})
        assert response.status_code == 201, content_type


async def test_unparseable_json_is_422_at_body(client: Client) -> None:
    response = await client.post("/test/widgets", content=b'{"name": ', headers={"content-type": "application/json"})
    body = assert_problem(response, 422, "http.validation_error")
    assert body["errors"] == [{"loc": ["body"], "msg": "The body is not valid JSON."}]


async def test_invalid_field_is_422_with_its_location(client: Client) -> None:
    response = await client.post("/test/widgets", json={"name": "far-too-long-a-name"})
    body = assert_problem(response, 422, "http.validation_error")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert len(errors) == 1
    assert errors[0]["loc"] == ["body", "name"]
    assert errors[0]["msg"] == "Must be at most 8 characters long."


async def test_missing_field_is_422(client: Client) -> None:
    response = await client.post("/test/widgets", json={"size": 2})
    body = assert_problem(response, 422, "http.validation_error")
    assert "name" in str(body["errors"])


async def test_unhandled_exception_is_a_generic_500_and_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="keel.http"):
        response = await client.get("/test/boom", headers={"x-request-id": "trace-me-42"})
    body = assert_problem(response, 500, "http.internal_error")
    assert "SELECT" not in response.text
    assert "Traceback" not in response.text
    assert body["detail"] == "The server failed to handle this request."
    [record] = [r for r in caplog.records if r.name == "keel.http"]
    assert record.exc_info is not None
    assert "SELECT password_hash" in str(record.exc_info[1])
    assert record.request_id == "trace-me-42"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "status", "code", "header", "value"),
    [
        ("conflict", 409, "widgets.name_taken", None, None),
        ("limited", 429, "rate_limited", "retry-after", "7"),
        ("unauthorized", 401, "unauthorized", "www-authenticate", "Bearer"),
        ("forbidden", 403, "widgets.admin_only", None, None),
        ("unavailable", 503, "unavailable", "retry-after", "3"),
        ("invalid", 422, "widgets.bad", None, None),
        ("not_found", 404, "widgets.not_found", None, None),
    ],
)
async def test_domain_errors_map_to_their_status(
    client: Client, kind: str, status: int, code: str, header: str | None, value: str | None
) -> None:
    response = await client.get(f"/test/raise/{kind}")
    assert_problem(response, status, code)
    if header is not None:
        assert response.headers[header] == value
