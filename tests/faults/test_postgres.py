"""SPEC §10, PostgreSQL down: a private server stopped (immediate mode: a crash) and started again, or frozen and
thawed, under a steady load of REST writes and WebSocket subscribers, while one `keel serve` keeps running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_JWT_SECRET
from tests.faults.load import Load, check, open_channel, stored_messages
from tests.servers import PostgresProcess, RedisProcess, keel_serve

WARM = 2.0  # seconds of load before the fault
OUTAGE = 5.0
AFTER = 2.0  # seconds of load once writes succeed again
RECOVERY = 15.0  # SPEC §10: everything recovers by itself within this, no restart
CHURN = 1.0  # each subscriber reconnects and resumes about this often, so some subscribe while the database is down
ANSWER = 5.0  # SPEC §10: a request that needs the database answers 503 within this while it is down


def private_env(pg: PostgresProcess, redis: RedisProcess) -> dict[str, str | None]:
    return {"DATABASE_URL": pg.url, "REDIS_URL": redis.url, "KEEL_JWT_SECRET": TEST_JWT_SECRET}


# immediate: a crash (sessions cut, crash recovery at the start); fast: sessions told 57P01 admin_shutdown first
@pytest.mark.parametrize("mode", ["immediate", "fast"])
async def test_postgres_stopped_and_restarted_under_load_loses_nothing_and_answers_503(
    mode: str, private_pg: PostgresProcess, private_redis: RedisProcess, tmp_path: Path
) -> None:
    with keel_serve(private_env(private_pg, private_redis), tmp_path) as server:
        auth, channel = open_channel(server.url, "outage")
        load = Load(server.url, auth, channel, churn=CHURN)
        async with load.running():
            await asyncio.sleep(WARM)
            await asyncio.to_thread(private_pg.stop, mode)
            stopped = time.monotonic()
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(private_pg.start)
            restarted = time.monotonic()
            await load.until(lambda: load.first_201_after(restarted) is not None, RECOVERY + 1)
            await asyncio.sleep(AFTER)
        stored = await stored_messages(private_pg.url, channel)
        await load.catch_up(stored[-1][0], within=RECOVERY)
        log = server.output()

    check(load, stored)
    recovery = load.first_201_after(restarted)
    assert recovery is not None, f"no write succeeded after the restart: {load.summary()}"
    assert recovery <= RECOVERY, f"the first write to succeed after the restart took {recovery:.1f} s"
    failed = load.failed()
    assert any(o.started >= stopped for o in failed), f"no write failed while PostgreSQL was down: {load.summary()}"
    wrong = [o for o in failed if (o.status, o.detail) != (503, "unavailable") or "problem+json" not in o.content_type]
    assert not wrong, f"errors other than 503 problem+json: {wrong[:5]}; {load.summary()}"
    slow = [o for o in load.outcomes if o.elapsed > ANSWER]
    assert not slow, f"answered after more than {ANSWER} s: {slow[:5]}"
    assert "Traceback" not in log, "an error reached the 500 handler"


async def test_a_frozen_postgres_costs_a_request_at_most_5_s_and_recovers_by_itself(
    private_pg: PostgresProcess, private_redis: RedisProcess, tmp_path: Path
) -> None:
    # nothing refuses a connection here: statements and connection attempts just wait, so only keel's own timeouts
    # (db.REQUEST_STATEMENT_TIMEOUT) stand between a request and a hang
    with keel_serve(private_env(private_pg, private_redis), tmp_path) as server:
        auth, channel = open_channel(server.url, "frozen")
        load = Load(server.url, auth, channel)
        async with load.running():
            await asyncio.sleep(WARM)
            private_pg.freeze()
            frozen = time.monotonic()
            try:
                await asyncio.sleep(OUTAGE + 1)  # past the statement timeout, and a connection attempt's after it
            finally:
                private_pg.thaw()
            thawed = time.monotonic()
            await load.until(lambda: load.first_201_after(thawed) is not None, RECOVERY + 1)
            await asyncio.sleep(AFTER)
        stored = await stored_messages(private_pg.url, channel)
        await load.catch_up(stored[-1][0], within=RECOVERY)
        log = server.output()

    check(load, stored)
    recovery = load.first_201_after(thawed)
    assert recovery is not None, f"no write succeeded after the thaw: {load.summary()}"
    assert recovery <= RECOVERY
    failed = load.failed()
    # answered while frozen, not started: the writes in flight at the freeze hold every writer until their 503s at
    # ANSWER, and the writes those writers start next meet the thaw before a timeout of their own
    answered_frozen = [o for o in failed if frozen <= o.started + o.elapsed <= thawed]
    assert answered_frozen, f"no write failed while PostgreSQL was frozen: {load.summary()}"
    wrong = [o for o in failed if (o.status, o.detail) != (503, "unavailable") or "problem+json" not in o.content_type]
    assert not wrong, f"errors other than 503 problem+json: {wrong[:5]}; {load.summary()}"
    slow = [o for o in load.outcomes if o.elapsed > ANSWER]
    assert not slow, f"answered after more than {ANSWER} s: {slow[:5]}"
    assert "Traceback" not in log, "an error reached the 500 handler"
