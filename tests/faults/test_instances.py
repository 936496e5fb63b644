"""SPEC §10, instances and workers die: one of two `keel serve` behind nginx SIGKILLed, and one worker of
`keel serve --workers 2` SIGKILLed, each under a steady load of REST writes and WebSocket subscribers."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import psutil
import pytest

from deploy.cluster import cluster
from tests.deploy.conftest import tool
from tests.faults.load import Load, Outcome, check, open_channel, stored_messages
from tests.servers import clean_env, free_port, keel_serve

WARM = 2.0  # seconds of load before the kill
AFTER = 2.0  # seconds of load once writes succeed again
RECOVERY = 15.0  # SPEC §10


def is_allowed_while_an_instance_dies(outcome: Outcome) -> bool:
    """A request cut off with its instance, or nginx's own 503 (its 502 becomes that), or keel's."""
    return outcome.status is None or (outcome.status, outcome.detail) in {
        (503, "http.unavailable"),
        (503, "unavailable"),
    }


@pytest.mark.timeout(300)  # the cluster's start may take deploy/cluster.py's READY_TIMEOUT on a loaded host
async def test_an_instance_killed_behind_nginx_loses_no_acknowledged_message(
    pg_url: str, scaled: dict[str, str | None], tmp_path: Path
) -> None:
    tool("nginx", "nginx")
    env = clean_env(scaled)
    ports = [free_port(), free_port()]
    with cluster(tmp_path, env=env, port=free_port(), keel_ports=ports) as running:
        auth, channel = open_channel(running.url, "killed-instance")
        load = Load(running.url, auth, channel, writers=3, subscribers=4)
        async with load.running():
            await asyncio.sleep(WARM)
            running.processes[f"keel-{ports[0]}"].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await load.until(lambda: load.first_201_after(killed) is not None, RECOVERY + 1)
            await asyncio.sleep(AFTER)
        stored = await stored_messages(pg_url, channel)
        await load.catch_up(stored[-1][0], within=RECOVERY)

    check(load, stored)
    assert any(s.closes for s in load.followers), "no socket was on the killed instance: the kill tested nothing"
    wrong = [o for o in load.failed() if not is_allowed_while_an_instance_dies(o)]
    assert not wrong, f"errors other than a cut connection or a 503: {wrong[:5]}; {load.summary()}"
    recovery = load.first_201_after(killed)
    assert recovery is not None, f"no write succeeded after the kill: {load.summary()}"
    assert recovery <= RECOVERY


def serving_workers(parent: psutil.Process, port: int) -> dict[int, int]:
    """uvicorn's workers under `parent`: pid -> established connections on `port` (its other children, such as
    multiprocessing's resource tracker, hold none and are not listed unless they serve)."""
    workers = {}
    for child in parent.children():
        try:
            connections = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            workers[child.pid] = sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in connections)
    return workers


async def test_a_worker_killed_under_workers_2_is_replaced_and_its_clients_resume(
    pg_url: str, scaled: dict[str, str | None], tmp_path: Path
) -> None:
    with keel_serve(scaled, tmp_path, "--workers", "2") as server:
        port = int(server.url.rsplit(":", 1)[1])
        parent = psutil.Process(server.process.pid)
        auth, channel = open_channel(server.url, "killed-worker")
        load = Load(server.url, auth, channel, writers=3, subscribers=4)
        async with load.running():
            await asyncio.sleep(WARM)
            before = serving_workers(parent, port)
            assert len(before) == 2, f"expected two workers, found {before}"
            victim = max(before, key=lambda pid: before[pid])  # the one holding the most sockets
            psutil.Process(victim).kill()
            killed = time.monotonic()
            replaced = await load.until(lambda: len(set(serving_workers(parent, port)) - {victim}) == 2, RECOVERY)
            assert replaced, f"the killed worker was not replaced within {RECOVERY} s: {serving_workers(parent, port)}"
            await load.until(lambda: load.first_201_after(killed) is not None, RECOVERY)
            await asyncio.sleep(AFTER)
        stored = await stored_messages(pg_url, channel)
        await load.catch_up(stored[-1][0], within=RECOVERY)

    check(load, stored)
    assert any(s.closes for s in load.followers), "no socket was on the killed worker: the kill tested nothing"
    wrong = [o for o in load.failed() if o.status is not None]
    assert not wrong, f"errors other than a cut connection: {wrong[:5]}; {load.summary()}"
