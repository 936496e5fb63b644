"""The graceful lifecycle of a real `keel serve` (keel.http.shutdown, keel.cli): SIGTERM turns readiness 503,
closes the listener, lets an in-flight REST publish commit, answer and reach subscribers, then closes sockets with
1001, ends SSE streams and exits 0; start-up waits for a database that does not answer yet, within a bound."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from keel import db
from keel.realtime.models import Channel
from tests.conftest import TEST_JWT_SECRET, Backend
from tests.realtime.conftest import backend_env, receive, start_live, subscribe
from tests.realtime.test_events import events
from tests.servers import Server, TcpForwarder, free_port, keel_serve, run_keel
from tests.test_telemetry import http_receiver, traced_env

RETRY = "keel: database not reachable ("
DELAY = 1.5  # KEEL_SHUTDOWN_DELAY of these servers: readiness is 503 this long before the listener closes


@asynccontextmanager
async def channel_locked(database_url: str, channel_id: str) -> AsyncIterator[None]:
    """Hold the channel's row (PostgreSQL) or the database's write lock (SQLite): a publish waits meanwhile."""
    engine = db.create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                update(Channel).where(Channel.id == uuid.UUID(channel_id)).values(description=Channel.description)
            )
            yield
            await connection.rollback()
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Signalled:
    """What a test of the drain sees between the SIGTERM and the release of the lock its publish waits for."""

    url: str
    publish: asyncio.Future[dict[str, Any]]  # the REST publish, still waiting for the lock
    at: float  # monotonic time of the SIGTERM


@asynccontextmanager
async def sigterm_during_publish(server: Server, database_url: str) -> AsyncIterator[Signalled]:
    """SIGTERM to `server` while a REST publish waits for its channel's lock, with a subscriber on a WebSocket and one
    on an event stream. The body checks the drain while the lock holds; on leaving, the lock goes and the publish is
    answered 201 and reaches both subscribers, then the socket is closed with 1001 and the stream ends."""
    live = start_live(server)
    async with live.socket() as subscriber:
        await subscribe(subscriber, live.channel)
        with events(live, live.channel) as stream:
            async with channel_locked(database_url, live.channel):
                publish = asyncio.ensure_future(asyncio.to_thread(live.post, "in flight at SIGTERM"))
                await asyncio.sleep(1.0)  # the publish waits for the lock (SQLite lets it wait 5 s in all)
                at = time.monotonic()
                os.killpg(server.process.pid, signal.SIGTERM)
                yield Signalled(live.url, publish, at)
            posted = await publish  # the lock is gone: it commits and is answered 201 (live.post checks)
            frame = await receive(subscriber)
            assert (frame["type"], frame["message"]) == ("message", posted)
            with pytest.raises(ConnectionClosed) as closed:
                await receive(subscriber)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
            event = await asyncio.to_thread(stream.next)
            assert event.message == posted
            with pytest.raises(EOFError):  # the stream ended
                await asyncio.to_thread(stream.next)


async def test_sigterm_answers_and_delivers_an_in_flight_rest_publish_before_closing_sockets(
    backend: Backend, tmp_path: Path
) -> None:
    env = backend_env(backend, KEEL_SHUTDOWN_DELAY=f"{DELAY * 1000:.0f}ms")
    with keel_serve(env, tmp_path) as server:
        async with sigterm_during_publish(server, backend.database_url) as signalled:
            ready = await asyncio.to_thread(httpx.get, f"{signalled.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["code"] == "ops.not_ready"
            assert ready.json()["detail"] == "The server is shutting down."
            await asyncio.sleep(DELAY + 0.5 - (time.monotonic() - signalled.at))
            with pytest.raises(httpx.ConnectError):  # the listener is closed: new connections stop
                await asyncio.to_thread(httpx.get, f"{signalled.url}/healthz")
            assert not signalled.publish.done()  # the drain waits for it
        assert server.process.wait(timeout=15) == 0
    output = server.output()
    assert "Traceback" not in output
    assert "Application shutdown complete" in output


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # the collector matters here, not the database
def test_sigterm_flushes_the_spans_still_waiting_for_export(backend: Backend, tmp_path: Path) -> None:
    with http_receiver() as (endpoint, collected):
        # a batch would leave only after a minute: what the collector gets, the shutdown flushed
        env = {**traced_env(backend, endpoint, "http/protobuf"), "OTEL_BSP_SCHEDULE_DELAY": "60000"}
        with keel_serve(env, tmp_path) as server:
            assert httpx.get(f"{server.url}/api/v1/public").status_code == 200
            os.killpg(server.process.pid, signal.SIGTERM)
            assert server.process.wait(timeout=15) == 0
        assert collected.named("GET /api/v1/public")


def unreachable_env(pg_url: str, port: int, wait: str) -> dict[str, str | None]:
    url = make_url(pg_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    return {"DATABASE_URL": url, "KEEL_JWT_SECRET": TEST_JWT_SECRET, "KEEL_DATABASE_WAIT": wait}


def test_startup_gives_up_on_an_unreachable_database_within_its_bound(pg_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_keel("serve", "--port", str(free_port()), env=unreachable_env(pg_url, free_port(), "2s"), cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith(RETRY)]) == 2  # waits of 0.5 s and 1 s
    assert lines[-1].startswith("keel: cannot reach the database after 3 tries in 2 s (ConnectionRefusedError")
    assert "Traceback" not in result.stderr
    # the tries above show the bound was kept (a third wait of 2 s would have passed it); the clock only checks
    # nothing hung, generously: starting the interpreter takes seconds on a loaded 2-core machine
    assert elapsed < 2 + 20


def test_startup_serves_once_the_database_answers_during_its_retries(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    target = make_url(pg_url)
    forwarder = TcpForwarder(port, (target.host or "127.0.0.1", target.port or 5432))
    done = threading.Event()

    def come_up_after_two_retries() -> None:
        while not done.wait(0.05):
            if sum(log.read_text().count(RETRY) for log in tmp_path.glob("server-*.log")) >= 2:
                forwarder.start()
                return

    late = threading.Thread(target=come_up_after_two_retries)
    late.start()
    try:
        with keel_serve(unreachable_env(pg_url, port, "20s"), tmp_path) as server:
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            output = server.output()
    finally:
        done.set()
        late.join()
        forwarder.stop()
    assert output.count(RETRY) in (2, 3)  # the third may have started as the port opened
    assert "Traceback" not in output
