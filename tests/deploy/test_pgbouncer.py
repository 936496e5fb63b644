"""keel through Debian's PgBouncer in transaction-pooling mode (SPEC §10): many keel connections share a few
server connections, each transaction on whichever is free."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.deploy.conftest import tool
from tests.realtime.conftest import Live, receive, start_live, subscribe
from tests.servers import free_port, keel_serve, run_keel, scaled_env

SERVER_CONNECTIONS = 2  # PgBouncer's pool per database and user: far fewer than keel's clients
# more keel instances than server connections: each keeps at least one client connection pooled once it has served a
# request, so pooling shows however few connections a request's batching and caching leave each instance needing
INSTANCES = SERVER_CONNECTIONS + 1
CONCURRENT = 60  # requests in flight at once over the instances, each with its own pool of connections


@dataclass
class PgBouncer:
    port: int
    psql: str

    def url(self, database_url: str) -> str:
        """`database_url` through this PgBouncer, with the statement caches off as the README says."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.update_query_dict({"prepared_statement_cache_size": "0"}).render_as_string(hide_password=False)

    def show(self, what: str) -> list[dict[str, str]]:
        """A `SHOW` of the admin console (simple query protocol only, so psql rather than asyncpg)."""
        console = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "pgbouncer", "-d", "pgbouncer"]
        result = subprocess.run(
            [self.psql, *console, "--csv", "-c", f"SHOW {what}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return list(csv.DictReader(io.StringIO(result.stdout)))


@pytest.fixture
def pgbouncer(pg_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    """A private pgbouncer on a free port, pooling transactions onto the test PostgreSQL as its user."""
    binary, psql = tool("pgbouncer", "pgbouncer"), tool("psql", "postgresql-client")
    server = make_url(pg_url)
    login = f"host={server.host} port={server.port or 5432} user={server.username}"
    if server.password:
        login += f" password={server.password}"
    port = free_port()
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = {login}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        # `any`: no client authentication, every server login as the database line's user; the console admits anyone
        "auth_type = any\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\nmax_client_conn = 200\n"
        # PgBouncer refuses to run as root (CI is root): it drops to an unprivileged user after reading this file
        + ("user = nobody\n" if os.geteuid() == 0 else "")
    )
    log = tmp_path / "pgbouncer.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start:\n{log.read_text()}") from None
                time.sleep(0.05)
        yield PgBouncer(port, psql)
    finally:
        process.send_signal(signal.SIGTERM)  # immediate shutdown in 1.18 (SIGINT waits for clients)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def env(pg_url: str, redis_url: str, pgbouncer: PgBouncer) -> dict[str, str | None]:
    """Instances of one service on the emptied test database, reached only through PgBouncer."""
    return scaled_env(pg_url, redis_url, DATABASE_URL=pgbouncer.url(pg_url))


async def test_rest_and_realtime_work_through_pgbouncer_in_transaction_mode(
    env: dict[str, str | None], pg_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    migrated = run_keel("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    with contextlib.ExitStack() as stack:
        instances = [stack.enter_context(keel_serve(env, tmp_path)) for _ in range(INSTANCES)]
        a, b = instances[:2]
        live = start_live(a)  # register, token, create a channel
        async with Live(b, live.tokens, live.channel).socket() as subscriber:
            await subscribe(subscriber, live.channel)
            first = live.post("through the pooler")
            assert (await receive(subscriber))["message"] == first

            async with httpx.AsyncClient(headers=live.auth, timeout=30) as client:

                async def post_and_list(i: int) -> tuple[int, int, int]:
                    base = f"{instances[i % INSTANCES].url}/api/v1/channels/{live.channel}/messages"
                    posted = await client.post(base, json={"body": f"m{i}"})
                    listed = await client.get(base, params={"limit": 5})
                    return posted.status_code, listed.status_code, posted.json().get("seq", 0)

                results = await asyncio.gather(*(post_and_list(i) for i in range(CONCURRENT)))
                assert {(posted, listed) for posted, listed, _ in results} == {(201, 200)}
                assert sorted(seq for _, _, seq in results) == list(range(2, CONCURRENT + 2))
                live_seqs = [(await receive(subscriber))["message"]["seq"] for _ in range(CONCURRENT)]
                assert live_seqs == list(range(2, CONCURRENT + 2))
                listed = await client.get(f"{b.url}/api/v1/channels/{live.channel}/messages", params={"limit": 3})
                assert [m["seq"] for m in listed.json()] == [CONCURRENT + 1, CONCURRENT, CONCURRENT - 1]

        # the proof of pooling: more keel connections than server connections, all of them served
        database = make_url(pg_url).database
        clients = [c for c in pgbouncer.show("CLIENTS") if c["database"] == database]
        servers = [s for s in pgbouncer.show("SERVERS") if s["database"] == database]
        assert len(servers) <= SERVER_CONNECTIONS < len(clients)
