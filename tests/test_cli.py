"""The `keel` command as users run it: real processes, real databases."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from keel import db
from keel.main import VERSION
from keel.realtime import asyncapi
from tests.conftest import Backend
from tests.servers import keel_serve, run_keel


def env_of(backend: Backend) -> dict[str, str | None]:
    return {"DATABASE_URL": backend.database_url, "REDIS_URL": backend.redis_url}


def revisions(url: str) -> tuple[set[str], set[str]]:
    async def read() -> tuple[set[str], set[str]]:
        engine = create_async_engine(url)
        try:
            return await db.schema_revisions(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_serve_refuses_an_unmigrated_database_with_one_line(empty_backend: Backend, tmp_path: Path) -> None:
    result = run_keel("serve", "--port", "1", env=env_of(empty_backend), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "keel migrate" in result.stderr


def test_migrate_from_empty_then_serve(empty_backend: Backend, tmp_path: Path) -> None:
    first = run_keel("migrate", env=env_of(empty_backend), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    database, code = revisions(empty_backend.database_url)
    assert database == code
    assert code
    again = run_keel("migrate", env=env_of(empty_backend), cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # idempotent
    with keel_serve(env_of(empty_backend), tmp_path) as server:
        assert httpx.get(f"{server.url}/readyz").json()["checks"]["database"] == "ok"


def set_revision(url: str, revision: str) -> None:
    async def write() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
        finally:
            await engine.dispose()

    asyncio.run(write())


def test_serve_tells_a_database_behind_from_one_ahead(empty_backend: Backend, tmp_path: Path) -> None:
    assert run_keel("migrate", env=env_of(empty_backend), cwd=tmp_path).returncode == 0
    set_revision(empty_backend.database_url, "0003_channels")  # a database an older keel migrated
    behind = run_keel("serve", "--port", "1", env=env_of(empty_backend), cwd=tmp_path)
    assert behind.returncode == 1
    assert "behind" in behind.stderr
    assert "run `keel migrate`" in behind.stderr
    set_revision(empty_backend.database_url, "9999_from_the_future")  # one a newer keel migrated
    ahead = run_keel("serve", "--port", "1", env=env_of(empty_backend), cwd=tmp_path)
    assert ahead.returncode == 1
    assert "does not know; upgrade keel" in ahead.stderr


def test_default_database_lives_in_var_of_the_working_directory(tmp_path: Path) -> None:
    result = run_keel("migrate", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "keel.db").is_file()


@pytest.mark.parametrize(
    ("variable", "value"), [("KEEL_PORT", "eighty"), ("DATABASE_URL", "mysql://db/keel"), ("KEEL_ENV", "production")]
)
def test_invalid_configuration_exits_2_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    result = run_keel("serve", env={variable: value}, cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("keel: invalid configuration:")
    assert variable in line or "DATABASE_URL" in line


def test_dotenv_errors_are_reported_the_same_way(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KEEL_WORKERS=many\n")
    result = run_keel("migrate", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "KEEL_WORKERS" in result.stderr


def test_workers_without_redis_are_refused(tmp_path: Path) -> None:
    result = run_keel("serve", "--workers", "2", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr
    assert result.stderr.strip().count("\n") == 0


# run by every Python process that sees it on PYTHONPATH: in multiprocessing's spawned children (uvicorn's workers)
# importing keel's HTTP protocol takes SLOW_IMPORT seconds longer, as on a loaded host
SLOW_WORKERS = """
import sys, time
if "--multiprocessing-fork" in sys.argv:
    class SlowImport:
        def find_spec(self, name, path=None, target=None):
            if name == "keel.http.server":
                time.sleep({delay})
            return None  # the import goes on as usual
    sys.meta_path.insert(0, SlowImport())
"""
SLOW_IMPORT = 7  # more than uvicorn's health-ping timeout (5 s) for a worker being spawned


@pytest.mark.parametrize("empty_backend", ["scaled"], indirect=True)
def test_two_workers_with_redis_serve_even_when_slow_to_start(empty_backend: Backend, tmp_path: Path) -> None:
    assert run_keel("migrate", env=env_of(empty_backend), cwd=tmp_path).returncode == 0
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_WORKERS.format(delay=SLOW_IMPORT))
    env = {**env_of(empty_backend), "PYTHONPATH": str(site)}
    with keel_serve(env, tmp_path, "--workers", "2", ready_timeout=60) as server:
        # ready means one worker answers; on a loaded host the other may still be importing: wait for it too
        deadline = time.monotonic() + 60
        while server.output().count('"msg":"Started server process') < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        for _ in range(20):
            assert httpx.get(f"{server.url}/api/v1/public").status_code == 200
        assert httpx.get(f"{server.url}/readyz").json()["checks"] == {"database": "ok", "redis": "ok"}
        # neither was killed as hung while it started: two workers, each started once
        assert server.output().count('"msg":"Started server process') == 2, server.output()
    assert "died" not in server.output()


def test_openapi_command_writes_the_document(tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"
    result = run_keel("openapi", "-o", str(target), env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(target.read_text())
    assert document["openapi"].startswith("3.1")
    assert {"/api/v1/public", "/api/v2/public", "/healthz", "/readyz"} <= document["paths"].keys()


def test_asyncapi_command_writes_the_built_document(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.json"
    result = run_keel("asyncapi", "-o", str(target), env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(target.read_text()) == json.loads(msgspec.json.encode(asyncapi.build(VERSION)))


def test_serve_logs_json_without_the_servers_access_lines(tmp_path: Path) -> None:
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    with keel_serve({}, tmp_path) as server:
        for _ in range(3):
            httpx.get(f"{server.url}/api/v1/public")
        time.sleep(0.2)
        lines = [line for line in server.output().splitlines() if line.startswith("{")]
    assert lines, server.output()
    assert all(json.loads(line)["level"] for line in lines)
    assert not [line for line in lines if json.loads(line).get("logger") == "uvicorn.access"]
