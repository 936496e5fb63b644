"""Accounts across real `keel serve` processes: what only a real deployment shape can show."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx

from tests.conftest import TEST_JWT_SECRET, empty_tables
from tests.factories import PASSWORD
from tests.servers import RedisProcess, keel_serve, run_keel, scaled_env, sign_up


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def log_in(base: str, username: str, password: str = PASSWORD) -> dict[str, str]:
    response = httpx.post(f"{base}/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


def test_logout_on_one_instance_is_honoured_by_another(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = scaled_env(pg_url, redis_url)
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        tokens = sign_up(a.url)
        # both instances have verified (and cached) the token
        assert httpx.get(f"{a.url}/api/v1/users/me", headers=bearer(tokens)).status_code == 200
        assert httpx.get(f"{b.url}/api/v1/users/me", headers=bearer(tokens)).status_code == 200
        assert httpx.post(f"{b.url}/api/v1/auth/logout", headers=bearer(tokens)).status_code == 204
        deadline = time.monotonic() + 2
        while httpx.get(f"{a.url}/api/v1/users/me", headers=bearer(tokens)).status_code != 401:
            assert time.monotonic() < deadline, "instance A still accepts a token logged out on B"
            time.sleep(0.02)


def test_create_admin_command(tmp_path: Path) -> None:
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    env = {"KEEL_ADMIN_PASSWORD": "an admin password", "KEEL_JWT_SECRET": TEST_JWT_SECRET}
    created = run_keel("create-admin", "--username", "root", "--email", "root@example.com", env=env, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "created admin root" in created.stderr
    again = run_keel("create-admin", "--username", "ROOT", "--email", "root@example.com", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "promoted admin root" in again.stderr
    bad = run_keel("create-admin", "--username", "x", "--email", "root@example.com", env=env, cwd=tmp_path)
    assert bad.returncode == 2
    assert "username" in bad.stderr
    with keel_serve({"KEEL_JWT_SECRET": TEST_JWT_SECRET}, tmp_path) as server:
        tokens = log_in(server.url, "root", "an admin password")
        listed = httpx.get(f"{server.url}/api/v1/users", headers=bearer(tokens))
        assert listed.status_code == 200
        assert [user["username"] for user in listed.json()] == ["root"]


def test_keys_generate_then_serve_in_eddsa_mode(tmp_path: Path) -> None:
    generated = run_keel("keys", "generate", "--dir", str(tmp_path / "keys"), env={}, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    settings = dict(line.split("=", 1) for line in generated.stdout.split())
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    with keel_serve(settings, tmp_path) as server:
        jwks = httpx.get(f"{server.url}/.well-known/jwks.json").json()
        [key] = jwks["keys"]
        assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
        body = {"username": "ada", "email": "ada@example.com", "password": PASSWORD}
        assert httpx.post(f"{server.url}/api/v1/users", json=body).status_code == 201
        tokens = log_in(server.url, "ada")
        assert httpx.get(f"{server.url}/api/v1/users/me", headers=bearer(tokens)).status_code == 200
        segment = tokens["access_token"].split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        assert (header["alg"], header["kid"]) == ("EdDSA", key["kid"])


def test_serve_refuses_a_bad_key_file(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not a key")
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    result = run_keel("serve", env={"KEEL_JWT_PRIVATE_KEY_FILE": str(tmp_path / "bad.key")}, cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.key" in result.stderr


def test_a_logout_during_a_redis_outage_is_honoured_everywhere_after_recovery(pg_url: str, tmp_path: Path) -> None:
    """SPEC §10: revocations go to the database too, and every instance reloads them when Redis returns."""
    asyncio.run(empty_tables(pg_url))
    with RedisProcess() as redis:
        env = {"DATABASE_URL": pg_url, "REDIS_URL": redis.url, "KEEL_JWT_SECRET": TEST_JWT_SECRET}
        with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
            body = {"username": "ada", "email": "ada@example.com", "password": PASSWORD}
            assert httpx.post(f"{a.url}/api/v1/users", json=body).status_code == 201
            tokens = log_in(a.url, "ada")
            assert httpx.get(f"{a.url}/api/v1/users/me", headers=bearer(tokens)).status_code == 200

            redis.stop()
            assert httpx.post(f"{b.url}/api/v1/auth/logout", headers=bearer(tokens), timeout=10).status_code == 204
            # B knows at once; A could not be told while Redis was down
            assert httpx.get(f"{b.url}/api/v1/users/me", headers=bearer(tokens)).status_code == 401
            redis.start()
            deadline = time.monotonic() + 15
            while httpx.get(f"{a.url}/api/v1/users/me", headers=bearer(tokens)).status_code != 401:
                assert time.monotonic() < deadline, "instance A did not reload revocations after Redis returned"
                time.sleep(0.2)
