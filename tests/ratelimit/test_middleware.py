"""The limiter as clients meet it: burst, refill, headers, keys, the auth policy, exemptions (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.main import create_app
from keel.ratelimit.deps import NamedPolicy, rate_limit_headers
from keel.ratelimit.gcra import Decision
from keel.settings import RatePolicy, Settings
from tests.conftest import UNLIMITED, Backend, make_settings
from tests.factories import PASSWORD, bearer

Client = AsyncTestClient[Litestar]


# a budget that does not refill within a test: at 2/s a pause of 0.5 s in the test process (CI saw 484 ms between
# two requests) gave a request back, and a test counting to the burst saw one more pass; the refill tests use REFILLING
SLOW = "1/min burst 5"
REFILLING = "2/s burst 5"


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return make_settings(backend, KEEL_RATE_LIMIT=SLOW, KEEL_AUTH_RATE_LIMIT="2/min burst 3")


@pytest.fixture
async def refilling(settings: Settings) -> AsyncIterator[Client]:
    fast = settings.model_copy(update={"rate_limit": RatePolicy.parse(REFILLING)})
    async with AsyncTestClient(app=create_app(fast)) as client:
        yield client


async def test_exactly_the_burst_passes_then_429(client: Client) -> None:
    for left in (4, 3, 2, 1, 0):
        response = await client.get("/api/v1/public")
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"default";q=5;w=300'
        assert response.headers["ratelimit"].startswith(f'"default";r={left};t=')
    refused = await client.get("/api/v1/public")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit"].startswith('"default";r=0;t=')
    assert refused.headers["x-request-id"]  # the edge still stamps refusals


async def test_the_bucket_refills_at_the_rate(refilling: Client) -> None:
    for _ in range(5):
        assert (await refilling.get("/api/v1/public")).status_code == 200
    assert (await refilling.get("/api/v1/public")).status_code == 429
    await asyncio.sleep(0.6)  # one emission interval (500 ms) and a little
    assert (await refilling.get("/api/v1/public")).status_code == 200
    assert (await refilling.get("/api/v1/public")).status_code == 429


async def test_t_says_when_the_bucket_is_full_again(refilling: Client) -> None:
    for _ in range(5):
        last = await refilling.get("/api/v1/public")
    t = int(last.headers["ratelimit"].rsplit("t=", 1)[1])
    assert t in (2, 3)  # five requests at 500 ms each drain in 2.5 s, less what the requests took
    await asyncio.sleep(t + 0.05)
    for _ in range(5):
        assert (await refilling.get("/api/v1/public")).status_code == 200


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/api-docs/openapi.json", "/swagger-ui", "/.well-known/jwks.json"]
)
async def test_operations_and_docs_are_never_limited(client: Client, path: str) -> None:
    for _ in range(12):
        response = await client.get(path)
        assert response.status_code == 200
        assert "ratelimit" not in response.headers


async def test_authenticated_clients_are_keyed_by_user(settings: Settings) -> None:
    # generous limits while the users sign up, then a strict default policy for the check
    roomy = settings.model_copy(update={"rate_limit": RatePolicy.parse(UNLIMITED)})
    tokens = {}
    async with AsyncTestClient(app=create_app(roomy)) as client:
        for name in ("ada", "bob"):
            body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            assert (await client.post("/api/v1/users", json=body)).status_code == 201
            login = await client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
            tokens[name] = login.json()
    async with AsyncTestClient(app=create_app(settings)) as client:
        for _ in range(5):
            assert (await client.get("/api/v1/protected", headers=bearer(tokens["ada"]))).status_code == 200
        assert (await client.get("/api/v1/protected", headers=bearer(tokens["ada"]))).status_code == 429
        # same address, another user, and the anonymous address key: separate budgets
        assert (await client.get("/api/v1/protected", headers=bearer(tokens["bob"]))).status_code == 200
        assert (await client.get("/api/v1/public")).status_code == 200


async def test_refusals_are_limited_too(client: Client) -> None:
    for _ in range(5):
        assert (await client.get("/api/v1/protected", headers={"Authorization": "Bearer guess"})).status_code == 401
    assert (await client.get("/api/v1/protected", headers={"Authorization": "Bearer guess"})).status_code == 429


async def test_the_token_endpoint_has_the_stricter_auth_policy(client: Client) -> None:
    for _ in range(3):
        response = await client.post("/api/v1/auth/token", data={"username": "nobody", "password": "wrong guess"})
        assert response.status_code == 401
        assert response.headers["ratelimit-policy"] == '"default";q=5;w=300, "auth";q=3;w=90'
    refused = await client.post("/api/v1/auth/token", data={"username": "nobody", "password": "wrong guess"})
    assert refused.status_code == 429
    assert "auth policy" in refused.json()["detail"]
    assert '"auth";r=0' in refused.headers["ratelimit"]
    assert int(refused.headers["retry-after"]) >= 20  # 2/min: the next attempt in about 30 s
    assert (await client.get("/api/v1/public")).status_code == 200  # the default budget is not spent


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def test_a_policy_can_be_turned_off(settings: Settings) -> None:
    quiet = settings.model_copy(update={"rate_limit": None})
    async with AsyncTestClient(app=create_app(quiet)) as client:
        for _ in range(8):
            response = await client.get("/api/v1/public")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
        # the auth policy still guards the token endpoint, alone in the headers
        login = await client.post("/api/v1/auth/token", data={"username": "nobody", "password": "wrong guess"})
        assert login.headers["ratelimit-policy"] == '"auth";q=3;w=90'


def test_the_headers_name_each_policy_once_in_order_with_what_is_left() -> None:
    default = NamedPolicy.of("default", RatePolicy.parse("10/s burst 20"))
    auth = NamedPolicy.of("auth", RatePolicy.parse("5/min burst 10"), exact=True)
    allowed = Decision(allowed=True, remaining=7, retry_after=0.0, reset_after=1.3)
    refused = Decision(allowed=False, remaining=3, retry_after=12.0, reset_after=119.2)
    assert rate_limit_headers([(default, allowed)]) == [
        (b"ratelimit-policy", b'"default";q=20;w=2'),
        (b"ratelimit", b'"default";r=7;t=2'),
    ]
    assert rate_limit_headers([(default, allowed), (auth, refused)]) == [
        (b"ratelimit-policy", b'"default";q=20;w=2, "auth";q=10;w=120'),
        (b"ratelimit", b'"default";r=7;t=2, "auth";r=0;t=120'),  # a refusal has nothing left, whatever it says
    ]
