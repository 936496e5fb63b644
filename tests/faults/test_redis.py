"""SPEC §10, Redis down, under load: tests/realtime/test_instances.py holds the gap filled after an outage with one
subscriber and a few posts; here the same fault meets a steady load of REST writes and resuming subscribers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from keel.redis import COMMAND_TIMEOUT, create_redis
from tests.conftest import TEST_JWT_SECRET
from tests.faults.load import Load, check, check_deliveries, open_channel, stored_messages
from tests.servers import RedisProcess, keel_serve

WARM = 2.0
OUTAGE = 3.0
AFTER = 2.0
RECOVERY = 15.0  # SPEC §10


async def test_redis_killed_and_restarted_under_load_every_write_still_commits_and_reaches_subscribers(
    pg_url: str, scaled: dict[str, str | None], private_redis: RedisProcess, tmp_path: Path
) -> None:
    env = {**scaled, "REDIS_URL": private_redis.url, "KEEL_JWT_SECRET": TEST_JWT_SECRET}
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        auth, channel = open_channel(a.url, "redis-outage")
        load = Load(a.url, auth, channel, writers=3)
        on_b = Load(b.url, auth, channel, writers=0)  # subscribers on the other instance: Redis carries their feed
        async with on_b.running(), load.running():
            await asyncio.sleep(WARM)
            await asyncio.to_thread(private_redis.stop)
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(private_redis.start)
            restarted = time.monotonic()
            await asyncio.sleep(AFTER)
        stored = await stored_messages(pg_url, channel)
        await asyncio.gather(
            load.catch_up(stored[-1][0], within=RECOVERY), on_b.catch_up(stored[-1][0], within=RECOVERY)
        )
        caught_up = time.monotonic() - restarted

    check(load, stored)
    check_deliveries(on_b, stored)
    assert not load.failed(), f"SPEC §10: REST writes still commit and answer 201 without Redis: {load.summary()}"
    assert caught_up <= RECOVERY + AFTER


async def test_a_command_that_timed_out_is_not_sent_again() -> None:
    """A timeout is no proof the command did not run: the server may only be slow to answer. Sent again, a limiter's
    script would count one request twice and an XADD publish one message twice. keel's client retries only a
    connection the server dropped."""
    with RedisProcess("--enable-debug-command", "yes") as server:
        admin, client = Redis.from_url(server.url), create_redis(server.url)
        try:
            sleep = admin.execute_command("DEBUG", "SLEEP", COMMAND_TIMEOUT + 1.5)  # type: ignore[no-untyped-call]
            stalled = asyncio.ensure_future(sleep)
            await asyncio.sleep(0.3)  # the server is asleep; the INCR below waits in its socket
            with pytest.raises(RedisTimeoutError):
                await client.incr("requests")
            await stalled
            assert await admin.get("requests") in (None, b"1")  # run once when the server woke, or not at all
        finally:
            await client.aclose()
            await admin.aclose()
