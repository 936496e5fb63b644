from __future__ import annotations

import asyncio

from keel.shared import Backends
from tests.shared.conftest import DEAD_REDIS_URL, OpenBackends


async def test_ping_is_ok_with_redis_and_disabled_without(backends_url: str | None, backends: Backends) -> None:
    assert await backends.ping() == ("disabled" if backends_url is None else "ok")


async def test_ping_reports_an_unreachable_redis_promptly(open_instance: OpenBackends) -> None:
    backends = await open_instance(DEAD_REDIS_URL)

    async with asyncio.timeout(1.5):
        assert await backends.ping() == "error"
