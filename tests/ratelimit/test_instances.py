"""The limiter behind real `keel serve` processes: proxies, a budget shared across instances, Redis outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from redis import Redis as SyncRedis

from tests.conftest import empty_tables
from tests.servers import RedisProcess, keel_serve, run_keel, scaled_env

STRICT = {"KEEL_RATE_LIMIT": "1/min burst 3"}  # three requests, then none for a long while


def statuses(url: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    return [httpx.get(f"{url}/api/v1/public", headers=headers).status_code for _ in range(count)]


def migrated(tmp_path: Path) -> Path:
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    return tmp_path


def test_forwarding_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    with keel_serve(STRICT, migrated(tmp_path)) as server:
        spoofed = [
            httpx.get(
                f"{server.url}/api/v1/public",
                headers={"X-Forwarded-For": f"203.0.113.{i}", "Forwarded": f"for=198.51.100.{i}"},
            ).status_code
            for i in range(4)
        ]
        assert spoofed == [200, 200, 200, 429]


def test_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    env = {**STRICT, "KEEL_TRUSTED_PROXIES": "127.0.0.1/32, 10.0.0.0/8"}
    with keel_serve(env, migrated(tmp_path)) as server:
        first = {"X-Forwarded-For": "203.0.113.7"}
        assert statuses(server.url, 4, first) == [200, 200, 200, 429]
        # another client behind the same proxy has its own budget
        assert statuses(server.url, 1, {"X-Forwarded-For": "203.0.113.8"}) == [200]
        # the right-most untrusted hop counts: a client cannot pick its key by prepending addresses
        chained = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.2.3"}
        assert statuses(server.url, 1, chained) == [429]


def token_attempts(url: str, count: int, headers: Callable[[int], dict[str, str]]) -> list[int]:
    form = {"username": "nobody", "password": "wrong password"}
    return [httpx.post(f"{url}/api/v1/auth/token", data=form, headers=headers(i)).status_code for i in range(count)]


def test_a_client_behind_nginx_cannot_pick_its_key_with_forwarded(tmp_path: Path) -> None:
    # the probe's bypass: nginx appends the real address to X-Forwarded-For and passes the client's own Forwarded
    # through; 25 logins, each naming another address in Forwarded, all used to get 401
    env = {"KEEL_AUTH_RATE_LIMIT": "5/min burst 10", "KEEL_TRUSTED_PROXIES": "127.0.0.1/32"}
    with keel_serve(env, migrated(tmp_path)) as server:
        codes = token_attempts(
            server.url, 12, lambda i: {"X-Forwarded-For": "203.0.113.7", "Forwarded": f"for=198.51.100.{i}"}
        )
        assert codes == [401] * 10 + [429] * 2


def test_a_proxy_that_writes_x_real_ip_ignores_the_clients_x_forwarded_for(tmp_path: Path) -> None:
    env = {
        "KEEL_AUTH_RATE_LIMIT": "5/min burst 10",
        "KEEL_TRUSTED_PROXIES": "127.0.0.1/32",
        "KEEL_PROXY_HEADER": "X-Real-IP",
    }
    with keel_serve(env, migrated(tmp_path)) as server:
        codes = token_attempts(server.url, 12, lambda i: {"X-Real-IP": "203.0.113.7", "X-Forwarded-For": f"10.0.0.{i}"})
        assert codes == [401] * 10 + [429] * 2
        # another client behind the same proxy still has its own budget
        assert token_attempts(server.url, 1, lambda _: {"X-Real-IP": "203.0.113.8"}) == [401]


def test_instances_on_one_redis_share_one_budget(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    env = scaled_env(pg_url, redis_url, **STRICT)
    with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
        assert statuses(a.url, 2) == [200, 200]
        assert statuses(b.url, 1) == [200]
        assert statuses(b.url, 1) == [429]
        assert statuses(a.url, 1) == [429]


def test_a_redis_outage_fails_open_and_limiting_resumes(pg_url: str, tmp_path: Path) -> None:
    asyncio.run(empty_tables(pg_url))
    with RedisProcess() as redis:
        env = {**STRICT, "DATABASE_URL": pg_url, "REDIS_URL": redis.url}
        with keel_serve(env, tmp_path) as server:
            assert statuses(server.url, 4) == [200, 200, 200, 429]
            redis.stop()
            started = time.monotonic()
            assert statuses(server.url, 10) == [200] * 10  # served, unlimited, while Redis is gone
            assert time.monotonic() - started < 5  # and without waiting on the dead connection
            redis.start()  # an empty Redis: the budget starts afresh once the limiter reconnects
            deadline = time.monotonic() + 15
            while statuses(server.url, 1) != [429]:
                assert time.monotonic() < deadline, "limiting did not resume after Redis returned"
                time.sleep(0.1)
            log = server.output()
    assert log.count("failing open") == 1, log  # logged once per outage, not per request


def test_two_instances_leasing_one_budget_admit_it_within_the_stated_tolerance(pg_url: str, tmp_path: Path) -> None:
    # "1/min burst 160": leases of up to 20 tokens, nothing refills meanwhile. Leases only move a token's use later,
    # so together the instances admit at most the burst, and at least the burst less what two held leases can lose.
    burst, k = 160, 20
    asyncio.run(empty_tables(pg_url))
    with RedisProcess() as redis:  # a server of its own: its script count is these instances' alone
        env = {"KEEL_RATE_LIMIT": f"1/min burst {burst}", "DATABASE_URL": pg_url, "REDIS_URL": redis.url}
        with keel_serve(env, tmp_path) as a, keel_serve(env, tmp_path) as b:
            with ThreadPoolExecutor(4) as pool:  # two clients on each instance, all at once
                codes = [code for codes in pool.map(statuses, [a.url, b.url] * 2, [100] * 4) for code in codes]
            with SyncRedis.from_url(redis.url) as client:
                runs = int(client.info("commandstats")["cmdstat_evalsha"]["calls"])
    admitted, refused = codes.count(200), codes.count(429)
    assert admitted + refused == len(codes)
    assert burst - 2 * (k - 1) <= admitted <= burst
    assert runs - refused <= admitted / 2  # (each refusal is a run) the admitted were mostly answered from leases
