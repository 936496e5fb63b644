"""`/metrics` (SPEC §9): real servers scraped as Prometheus would, workers added up, the figures operators read."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from keel import db, metrics
from keel.accounts.errors import PasswordPoolBusy
from keel.accounts.passwords import PasswordHasher
from tests.conftest import IN_CI, TEST_JWT_SECRET, Backend
from tests.factories import Client, bearer, log_in, make_channel, register
from tests.servers import keel_serve, load_both_workers, run_keel, scaled_env, sign_up

DASHBOARD = Path(__file__).parent.parent / "deploy" / "observability" / "grafana-dashboard.json"
MESSAGES_ROUTE = "/api/v1/channels/{channel_id}/messages"
UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.IGNORECASE)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """The exposition text of `url`/metrics, and every sample in it by (name, labels)."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_to(samples: Samples, route: str, method: str = "GET", status: str = "200") -> float:
    return value(samples, "http_requests_total", method=method, route=route, status=status)


def promtool_check(text: str) -> None:
    """`promtool check metrics` on `text`: required under CI=true (.ci/run installs it), else skipped without it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool not found; CI=true requires it (Debian package prometheus)", pytrace=False)
        pytest.skip("promtool not found (Debian package prometheus); set CI=true to make this a failure")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def env_of(backend: Backend) -> dict[str, str | None]:
    return {"DATABASE_URL": backend.database_url, "REDIS_URL": backend.redis_url, "KEEL_JWT_SECRET": TEST_JWT_SECRET}


def test_a_real_server_counts_requests_by_route_template(backend: Backend, tmp_path: Path) -> None:
    with keel_serve(env_of(backend), tmp_path) as server:
        auth = {"Authorization": f"Bearer {sign_up(server.url)['access_token']}"}
        channel = httpx.post(f"{server.url}/api/v1/channels", json={"name": "counted"}, headers=auth).json()["id"]
        messages = f"{server.url}/api/v1/channels/{channel}/messages"
        assert httpx.post(messages, json={"body": "first"}, headers=auth).status_code == 201
        text, before = scrape(server.url)
        promtool_check(text)
        for body in ("second", "third"):
            assert httpx.post(messages, json={"body": body}, headers=auth).status_code == 201
        assert httpx.get(f"{server.url}/api/v1/channels/{channel}/nothing-here").status_code == 404
        assert httpx.head(f"{server.url}/api/v1/channels/{channel}/messages", headers=auth).status_code == 200
        text, after = scrape(server.url)
        promtool_check(text)

    assert requests_to(before, MESSAGES_ROUTE, "POST", "201") == 1
    assert requests_to(after, MESSAGES_ROUTE, "POST", "201") == 3
    assert requests_to(after, MESSAGES_ROUTE, "HEAD") == 1  # HEAD is labelled by the template its GET copy matched
    assert requests_to(after, metrics.UNMATCHED_ROUTE, status="404") >= 1
    assert requests_to(after, "/metrics") >= 1  # the scrapes count too (README: Metrics)
    count = value(after, "http_request_duration_seconds_count", method="POST", route=MESSAGES_ROUTE)
    assert count == 3
    assert value(after, "http_request_duration_seconds_sum", method="POST", route=MESSAGES_ROUTE) > 0
    labels = {label for _, labelset in after for _, label in labelset}
    assert not [label for label in labels if UUID.search(label)], "an id reached a label"
    assert value(after, "keel_db_pool_in_use") == 0  # every request gave its connection back


def dashboard_metrics() -> set[str]:
    """The metric names the Grafana dashboard's queries use."""
    document = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in document["panels"] for target in panel["targets"]]
    assert exprs
    names = {name for expr in exprs for name in re.findall(r"\b(?:http|keel)_[a-z0-9_]+\b", expr)}
    assert names
    return names


def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    env: dict[str, str | None] = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"}
    assert run_keel("migrate", env=env, cwd=tmp_path).returncode == 0
    with keel_serve(env, tmp_path) as server:
        assert httpx.get(f"{server.url}/api/v1/public").status_code == 200
        _, samples = scrape(server.url)
    exported = {name for name, _ in samples}
    missing = sorted(name for name in dashboard_metrics() if name not in exported)
    assert not missing, f"the dashboard queries metrics /metrics does not export: {missing}"


def test_two_workers_add_up_in_every_scrape(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"  # where `keel serve` makes its metrics directory, to look inside and to see it go
    temp.mkdir()
    route = "/api/v1/public"
    with keel_serve(
        scaled_env(pg_url, redis_url, TMPDIR=str(temp)), tmp_path, "--workers", "2", ready_timeout=60
    ) as server:
        (directory,) = temp.glob("keel-metrics-*")
        sent = load_both_workers(server.url, directory, route)
        scrapes = [scrape(server.url) for _ in range(8)]
        promtool_check(scrapes[0][0])
    for _, samples in scrapes:
        assert requests_to(samples, route) == sent
        assert ("keel_db_pool_in_use", frozenset()) in samples
        assert value(samples, "keel_ws_connections") == 0
    assert not directory.exists(), "the metrics directory outlived the server"


def test_a_dead_workers_gauges_leave_the_sum_but_its_counts_stay(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for kind in ("gauge_livesum", "counter", "histogram"):
        (tmp_path / f"{kind}_{gone.pid}.db").write_bytes(b"")
    alive = f"gauge_livesum_{os.getpid()}.db"
    (tmp_path / alive).write_bytes(b"")
    metrics.forget_dead_workers(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [alive, f"counter_{gone.pid}.db", f"histogram_{gone.pid}.db"]
    )


# -- the figures operators reach for, exercised in-process (the default registry) --------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_pool_in_use_follows_checkouts(backend: Backend) -> None:
    engine = db.create_engine(backend.database_url)
    try:
        before = sample("keel_db_pool_in_use")
        async with engine.connect(), engine.connect():
            assert sample("keel_db_pool_in_use") == before + 2
        assert sample("keel_db_pool_in_use") == before
    finally:
        await engine.dispose()


async def test_password_queue_depth_and_refusals() -> None:
    hasher = PasswordHasher(workers=1, max_waiting=1, max_wait=10)
    refused = sample("keel_password_refusals_total", reason="queue_full")
    try:
        running = asyncio.create_task(hasher.hash("first"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hasher.hash("second"))
        await asyncio.sleep(0)
        assert sample("keel_password_hashes_waiting") == 1
        with pytest.raises(PasswordPoolBusy):
            await hasher.hash("third")
        assert sample("keel_password_refusals_total", reason="queue_full") == refused + 1
        await asyncio.gather(running, waiting)
        assert sample("keel_password_hashes_waiting") == 0
    finally:
        hasher.close()


async def test_cache_lookups_count_hits_and_misses(client: Client) -> None:
    await register(client)
    auth = bearer(await log_in(client))
    channel = await make_channel(client, auth, "cached")
    hits, misses = sample("keel_cache_lookups_total", result="hit"), sample("keel_cache_lookups_total", result="miss")
    for _ in range(2):
        assert (await client.get(f"/api/v1/channels/{channel['id']}", headers=auth)).status_code == 200
    assert sample("keel_cache_lookups_total", result="miss") == misses + 1
    assert sample("keel_cache_lookups_total", result="hit") == hits + 1


async def test_requests_are_tallied_and_folded_into_the_metrics_before_a_scrape() -> None:
    # observe_request tallies in plain counters and folds them into prometheus_client's histogram internals once
    # a loop turn: the exposition must read as if every request had been observed one by one
    route = "/test/fold/{id}"
    for nanoseconds in (1_000_000, 5_000_000, 7_000_000, 20_000_000_000):  # 1, 5 (a bound: in its bucket), 7 ms, 20 s
        metrics.observe_request("GET", route, 200, nanoseconds)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())  # folds what is pending
        for sample in family.samples
    }
    assert value(samples, "http_requests_total", method="GET", route=route, status="200") == 4
    buckets = {
        le: value(samples, "http_request_duration_seconds_bucket", method="GET", route=route, le=le)
        for le in ("0.005", "0.01", "10.0", "+Inf")
    }
    assert buckets == {"0.005": 2, "0.01": 3, "10.0": 3, "+Inf": 4}
    assert value(samples, "http_request_duration_seconds_count", method="GET", route=route) == 4
    assert value(samples, "http_request_duration_seconds_sum", method="GET", route=route) == pytest.approx(20.013)
    await asyncio.sleep(0)  # the fold scheduled by the first call runs with nothing left to add
    assert metrics._pending == {}
