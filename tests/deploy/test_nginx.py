"""The nginx deployment shape (deploy/nginx.conf through deploy/cluster.py): Debian's nginx in front of three real
`keel serve` processes on PostgreSQL and Redis, two on Granian for HTTP and one on uvicorn for /ws and /events,
driven by real clients.

Every client here connects to nginx from its own loopback address (127.0.0.2, 127.0.0.3, ...), while nginx reaches
keel from 127.0.0.1, the one trusted proxy: so keel can tell a client from the proxy, as on a real network.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import connect

from deploy import cluster as cluster_script
from deploy.cluster import TEMPLATE, Cluster, cluster, render
from tests.conftest import TEST_JWT_SECRET
from tests.deploy.conftest import tool
from tests.realtime.conftest import receive, send, subscribe
from tests.servers import clean_env, free_port, scaled_env

# a cluster's start (a migration, then every keel up to deploy/cluster.py's READY_TIMEOUT on a loaded host) counts
# against the first test of the module that uses it
pytestmark = pytest.mark.timeout(300)

AUTH_BURST = 8  # token requests one client address may make (a budget shared by both instances)
PASSWORD = "correct horse battery"
T = TypeVar("T")


@dataclass(frozen=True)
class Shape:
    cluster: Cluster

    @property
    def url(self) -> str:
        return self.cluster.url

    def client(self, address: str, **options: Any) -> httpx.Client:
        """A client of nginx connecting from `address` (any 127.x.y.z is this machine)."""
        return httpx.Client(base_url=self.url, transport=httpx.HTTPTransport(local_address=address), **options)

    def user(self, name: str, address: str) -> dict[str, str]:
        """Sign `name` up through nginx: their bearer header."""
        with self.client(address) as client:
            body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            assert client.post("/api/v1/users", json=body).status_code == 201
            token = client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
            assert token.status_code == 200, token.text
            return {"Authorization": f"Bearer {token.json()['access_token']}"}

    def access_lines(self, instance: str, route: str) -> list[dict[str, Any]]:
        """The access-log lines of one keel (`http://127.0.0.1:<port>`) for `route`."""
        log = self.cluster.logs / f"keel-{instance.rsplit(':', 1)[1]}.log"
        lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        return [line for line in lines if line.get("logger") == "keel.access" and line.get("route") == route]


def eventually(check: Callable[[], T], within: float = 5) -> T:
    """`check()` once it is truthy, trying every 0.1 s; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, f"still {result!r} after {within} s"
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def shape(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shape]:
    tool("nginx", "nginx")
    env = clean_env(scaled_env(pg_url, redis_url, KEEL_AUTH_RATE_LIMIT=f"1/h burst {AUTH_BURST}"))
    directory = tmp_path_factory.mktemp("cluster")
    nginx, *http, realtime = distinct_ports(4)
    with cluster(directory, env=env, port=nginx, keel_ports=http, realtime_ports=[realtime]) as running:
        yield Shape(running)


def distinct_ports(count: int) -> list[int]:
    """`count` free ports, no two alike: the kernel may hand out a port it has just handed out and seen closed."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def test_the_template_names_only_what_cluster_fills_in() -> None:
    rendered = render(
        TEMPLATE.read_text(),
        listen="127.0.0.1:8080",
        upstreams=["127.0.0.1:3001", "127.0.0.1:3002"],
        realtime=["127.0.0.1:3003"],
    )
    assert "server 127.0.0.1:3001; server 127.0.0.1:3002;" in rendered
    assert "upstream keel_realtime {\n        zone keel_realtime 64k;\n        server 127.0.0.1:3003;" in rendered
    # one pool serves everything when there is no realtime pool
    single = render(TEMPLATE.read_text(), listen="80", upstreams=["k:3000"])
    assert "upstream keel_realtime {\n        zone keel_realtime 64k;\n        server k:3000;" in single
    assert "listen 127.0.0.1:8080;" in rendered
    assert "${" not in rendered
    with pytest.raises(ValueError, match="unknown placeholder"):
        render("listen ${NGINX_PORT};", listen="80", upstreams=[])


async def test_websocket_through_nginx_gets_what_is_published_on_either_instance(shape: Shape) -> None:
    auth = shape.user("wendy", "127.0.0.2")
    with shape.client("127.0.0.2", headers=auth) as client:
        channel = client.post("/api/v1/channels", json={"name": "round-robin"}).json()["id"]
        ws_url = shape.url.replace("http://", "ws://") + "/ws"
        async with connect(ws_url, additional_headers=auth, local_addr=("127.0.0.2", 0)) as socket:
            await subscribe(socket, channel)
            posted = [client.post(f"/api/v1/channels/{channel}/messages", json={"body": f"m{i}"}) for i in range(8)]
            assert [p.status_code for p in posted] == [201] * 8
            live = [(await receive(socket))["message"]["seq"] for _ in posted]
            assert live == list(range(1, 9))
            await send(socket, type="publish", channel=channel, body="over the socket", ref="r")
            assert (await receive(socket))["type"] in {"published", "message"}
    # the socket was held by the realtime instance (its line is written when it closes), the posts went round the
    # HTTP pool on Granian and reached it through Redis
    posts = "/api/v1/channels/{channel_id}/messages"
    [realtime] = shape.cluster.realtime
    eventually(lambda: shape.access_lines(realtime, "/ws"))
    assert not shape.access_lines(realtime, posts), "a publish went to the realtime pool"
    for instance in shape.cluster.instances:
        assert not shape.access_lines(instance, "/ws")
        assert shape.access_lines(instance, posts), f"nginx sent no publish to {instance}"


async def test_server_sent_events_arrive_through_nginx_one_by_one(shape: Shape) -> None:
    auth = shape.user("sam", "127.0.0.3")
    with shape.client("127.0.0.3", headers=auth) as client:
        channel = client.post("/api/v1/channels", json={"name": "unbuffered"}).json()["id"]
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
        async with (
            httpx.AsyncClient(base_url=shape.url, headers=auth, transport=transport, timeout=10) as streaming,
            streaming.stream("GET", "/events", params={"channel": channel}) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.aiter_lines()

            async def next_data() -> dict[str, Any]:
                while not (line := await asyncio.wait_for(anext(lines), timeout=3)).startswith("data:"):
                    pass
                data: dict[str, Any] = json.loads(line.removeprefix("data:"))
                return data

            for i in range(3):  # each event is read while the stream stays open: nothing waits for a buffer to fill
                posted = client.post(f"/api/v1/channels/{channel}/messages", json={"body": f"e{i}"}).json()
                assert await next_data() == posted
    [realtime] = shape.cluster.realtime
    eventually(lambda: shape.access_lines(realtime, "/events"))
    assert not any(shape.access_lines(instance, "/events") for instance in shape.cluster.instances)


def test_a_logout_on_one_instance_is_honoured_by_the_other(shape: Shape) -> None:
    auth = shape.user("lou", "127.0.0.4")
    first, second = shape.cluster.instances
    for instance in (first, second):
        assert httpx.get(f"{instance}/api/v1/users/me", headers=auth).status_code == 200
    assert httpx.post(f"{first}/api/v1/auth/logout", headers=auth).status_code == 204
    eventually(lambda: httpx.get(f"{second}/api/v1/users/me", headers=auth).status_code == 401)
    with shape.client("127.0.0.4", headers=auth) as client:  # whichever instance nginx picks
        assert [client.get("/api/v1/users/me").status_code for _ in range(4)] == [401] * 4


def test_one_rate_limit_budget_per_real_client_whatever_forwarding_headers_it_sends(shape: Shape) -> None:
    def guess(client: httpx.Client, i: int) -> int:
        spoofed = {
            "X-Forwarded-For": f"203.0.113.{i}",
            "Forwarded": f"for=198.51.100.{i}",
            "X-Real-IP": f"192.0.2.{i}",
        }
        return client.post(
            "/api/v1/auth/token", data={"username": "nobody", "password": "wrong guess"}, headers=spoofed
        ).status_code

    with shape.client("127.0.0.5") as attacker:
        statuses = [guess(attacker, i) for i in range(AUTH_BURST + 2)]
    # both instances drew on one budget, keyed by the address nginx saw: spoofed headers bought nothing
    assert statuses == [401] * AUTH_BURST + [429, 429]
    with shape.client("127.0.0.6") as someone_else:
        assert guess(someone_else, 0) == 401  # another real address has its own budget
    nginx_log = (shape.cluster.logs / "nginx.log").read_text()
    assert all(f"upstream={instance.removeprefix('http://')}" in nginx_log for instance in shape.cluster.instances)


def free_port_run(count: int, besides: int) -> int:
    """A port P such that P ... P + count - 1 are all free and not `besides`: `--first-keel-port` takes consecutive
    ports."""
    while True:
        port = free_port()
        if besides in range(port, port + count):
            continue
        try:
            for offset in range(1, count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port


def test_make_cluster_serves_until_ctrl_c_stops_it_all(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    tool("nginx", "nginx")
    env = clean_env({"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "KEEL_JWT_SECRET": TEST_JWT_SECRET})
    port = free_port()
    first = free_port_run(3, besides=port)  # two Granian instances and one uvicorn, by default
    command = [sys.executable, cluster_script.__file__, "--port", str(port), "--first-keel-port", str(first)]
    output = tmp_path / "cluster.out"
    with output.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        urls = [f"http://127.0.0.1:{p}/readyz" for p in (port, first, first + 1, first + 2)]
        # a migration and four processes starting at once on a loaded machine (deploy/cluster.py's READY_TIMEOUT)
        eventually(lambda: all(_answers(url) for url in urls), within=cluster_script.READY_TIMEOUT + 60)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=40) == 0, output.read_text()
        assert not any(_answers(url) for url in urls)
        assert (tmp_path / "var" / "cluster" / "logs" / "nginx.log").is_file()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
