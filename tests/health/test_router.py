from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.main import create_app
from keel.settings import Settings
from tests.conftest import Backend, make_settings

Client = AsyncTestClient[Litestar]
DEAD_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:1/keel"
DEAD_REDIS = "redis://127.0.0.1:1/0"


async def test_healthz(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_everything_answers(client: Client, backend: Backend) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    redis = "ok" if backend.redis_url else "disabled"
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": redis}}


async def test_readyz_is_503_once_the_server_is_stopping(client: Client, backend: Backend) -> None:
    client.app.state.lifecycle.stopping = True  # what the first SIGTERM does (keel.http.shutdown)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    redis = "ok" if backend.redis_url else "disabled"
    assert response.json()["detail"] == "The server is shutting down."
    assert response.json()["checks"] == {"database": "ok", "redis": redis}
    assert (await client.get("/healthz")).status_code == 200  # alive: only readiness changes


async def readyz(settings: Settings) -> tuple[int, dict[str, object], str | None]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.get("/readyz")
    return response.status_code, response.json(), response.headers.get("content-type")


async def test_readyz_is_503_when_the_database_is_down(backend: Backend) -> None:
    status, body, content_type = await readyz(make_settings(backend, DATABASE_URL=DEAD_POSTGRES))
    assert status == 503
    assert content_type == "application/problem+json"
    assert body["code"] == "ops.not_ready"
    assert body["checks"] == {"database": "error", "redis": "ok" if backend.redis_url else "disabled"}


async def test_readyz_is_503_when_redis_is_down(backend: Backend) -> None:
    status, body, _ = await readyz(make_settings(backend, REDIS_URL=DEAD_REDIS))
    assert status == 503
    assert body["checks"] == {"database": "ok", "redis": "error"}


async def test_a_request_that_needs_a_dead_database_is_503(backend: Backend) -> None:
    settings = make_settings(backend, DATABASE_URL=DEAD_POSTGRES)
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.post(
            "/api/v1/users", json={"username": "ada", "email": "ada@example.com", "password": "long enough"}
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unavailable"
    assert response.headers["retry-after"] == "2"
    assert "127.0.0.1" not in response.text  # no connection details reach the client
