"""SPEC §10, PostgreSQL down: a private server stopped (immediate mode: a crash) and started again under a steady
load of REST writes and WebSocket subscribers, while one `keel serve` keeps running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import TEST_JWT_SECRET
from tests.faults.load import Load, check, open_channel, stored_messages
from tests.servers import PostgresProcess, RedisProcess, keel_serve

WARM = 2.0  # seconds of load before the fault
OUTAGE = 5.0
AFTER = 2.0  # seconds of load once writes succeed again
RECOVERY = 15.0  # SPEC §10: everything recovers by itself within this, no restart
CHURN = 1.0  # each subscriber reconnects and resumes about this often, so some subscribe while the database is down
ANSWER = 5.0  # SPEC §10: a request that needs the database answers 503 within this while it is down


async def test_postgres_stopped_and_restarted_under_load_loses_nothing_and_answers_503(
    private_pg: PostgresProcess, private_redis: RedisProcess, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {
        "DATABASE_URL": private_pg.url,
        "REDIS_URL": private_redis.url,
        "KEEL_JWT_SECRET": TEST_JWT_SECRET,
    }
    with keel_serve(env, tmp_path) as server:
        auth, channel = open_channel(server.url, "outage")
        load = Load(server.url, auth, channel, churn=CHURN)
        async with load.running():
            await asyncio.sleep(WARM)
            await asyncio.to_thread(private_pg.stop, "immediate")
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
