"""Forged and broken access tokens against the running app: every one is a 401 invalid_token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from keel.identity.keys import generate_ed25519_keypair
from keel.main import create_app
from keel.settings import Settings
from tests.conftest import TEST_JWT_SECRET, Backend, make_settings
from tests.factories import bearer, log_in, register

Client = AsyncTestClient[Litestar]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {
        "sub": str(uuid.uuid4()),
        "preferred_username": "mallory",
        "sid": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": "keel",
        "aud": "keel-api",
        "typ": "access",
        "scope": "admin",
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def hs256(payload: dict[str, Any], key: bytes = TEST_JWT_SECRET.encode(), **header: Any) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=header or None)


def unsigned(payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}."


FORGED = {
    "alg none": unsigned(claims()),
    "another key": hs256(claims(), b"an-attacker-key-that-is-32-bytes-long!"),
    "expired": hs256(claims(exp=int(time.time()) - 120)),
    "missing exp": hs256(claims(exp=None)),
    "wrong iss": hs256(claims(iss="someone-else")),
    "wrong aud": hs256(claims(aud="another-api")),
    "refresh typ": hs256(claims(typ="refresh")),
    "unknown kid": hs256(claims(), kid="not-our-key"),
    "garbage header": "!!!.???.***",
}


async def test_a_control_token_signed_with_our_key_passes(client: Client) -> None:
    # the forged tokens below differ from this one in one way each, so each 401 is about that way
    response = await client.get("/api/v1/protected", headers={"Authorization": f"Bearer {hs256(claims())}"})
    assert response.status_code == 200


@pytest.mark.parametrize("token", FORGED.values(), ids=FORGED.keys())
async def test_forged_tokens_are_refused(client: Client, token: str) -> None:
    for path in ("/api/v1/protected", "/api/v1/users"):
        response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.fixture
def eddsa_settings(backend: Backend, tmp_path: Path) -> Settings:
    private, public = generate_ed25519_keypair(tmp_path / "keys")
    return make_settings(backend, KEEL_JWT_PRIVATE_KEY_FILE=str(private), KEEL_JWT_PUBLIC_KEYS_DIR=str(public.parent))


@pytest.fixture
async def eddsa_client(eddsa_settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(eddsa_settings)) as client:
        yield client


async def test_eddsa_mode_refuses_hs256_signed_with_the_public_key(
    eddsa_client: Client, eddsa_settings: Settings
) -> None:
    await register(eddsa_client, "ada")
    genuine = await log_in(eddsa_client, "ada")
    assert (await eddsa_client.get("/api/v1/protected", headers=bearer(genuine))).status_code == 200
    jwks = (await eddsa_client.get("/.well-known/jwks.json")).json()
    kid = jwks["keys"][0]["kid"]
    assert eddsa_settings.jwt_public_keys_dir is not None
    public_pem = next(eddsa_settings.jwt_public_keys_dir.glob("*.pem")).read_bytes()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims()).encode())
    for key in (public_pem, base64.urlsafe_b64decode(jwks["keys"][0]["x"] + "==")):
        signature = b64(hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest())
        response = await eddsa_client.get(
            "/api/v1/protected", headers={"Authorization": f"Bearer {header}.{body}.{signature}"}
        )
        assert response.status_code == 401
    # and the HS256 secret that is also configured is off in EdDSA mode
    hs = hs256(claims())
    assert (await eddsa_client.get("/api/v1/protected", headers={"Authorization": f"Bearer {hs}"})).status_code == 401
