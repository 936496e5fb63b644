"""Request-head limits on a real `keel serve` (SPEC §2): raw sockets attack, an httpx client stands by."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.http.server import HEAD_LIMIT, HEAD_TIMEOUT
from tests.servers import Server, keel_serve, run_keel

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd: Path = tmp_path_factory.mktemp("server-limits")
    assert run_keel("migrate", env={}, cwd=cwd).returncode == 0
    with keel_serve({}, cwd) as server:
        yield server


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset after its answer still leaves the answer readable."""
    received = bytearray()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(64 * KIB)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


def assert_problem(data: bytes, status: int, code: str) -> None:
    got, headers, body = parse_response(data)
    assert got == status
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    document: dict[str, Any] = json.loads(body)
    assert (document["status"], document["code"], document["type"]) == (status, code, f"urn:keel:problem:{code}")


def many_headers(size: int) -> bytes:
    return b"".join(b"x-fill-%d: " % i + b"a" * 1000 + b"\r\n" for i in range(size // 1014))


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100 * KIB, id="one-header-unfinished"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + many_headers(100 * KIB) + b"\r\n", id="many-headers"),
        pytest.param(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + many_headers(100 * KIB) + b"\r\n",
            id="websocket-upgrade",
        ),
    ],
)
def test_a_head_past_64_kib_gets_431_problem_json(live: Server, request_bytes: bytes) -> None:
    assert len(request_bytes) > HEAD_LIMIT == 64 * KIB
    with socket.create_connection(address(live), timeout=10) as sock:
        sock.sendall(request_bytes)  # then nothing more: the answer must not wait for the rest of the head
        assert_problem(read_until_closed(sock), 431, "http.request_header_fields_too_large")


def test_a_huge_header_is_refused_before_it_is_read(live: Server) -> None:
    with socket.create_connection(address(live), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent, chunk = 0, b"a" * 64 * KIB
        started = time.monotonic()
        try:
            while sent < 16 * MIB:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset or broken pipe: the server closed while we were still sending
            pass
        elapsed = time.monotonic() - started
        # what was sent fits in the two sockets' buffers: the server stopped reading at the limit
        assert sent < 8 * MIB
        assert elapsed < 5
        assert_problem(read_until_closed(sock), 431, "http.request_header_fields_too_large")


def stream_huge_headers(port: int, stop: threading.Event, refused: list[int]) -> None:
    """Connect again and again, each time streaming a header of up to 32 MiB until the server cuts in."""
    chunk = b"a" * 64 * KIB
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sent = 0
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
                while sent < 32 * MIB and not stop.is_set():
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                refused.append(sent)


def test_huge_headers_do_not_slow_other_clients(live: Server) -> None:
    stop, refused = threading.Event(), list[int]()  # bytes each refused attacker had sent
    attackers = [
        threading.Thread(target=stream_huge_headers, args=(address(live)[1], stop, refused), daemon=True)
        for _ in range(4)
    ]
    latencies = []
    try:
        for attacker in attackers:
            attacker.start()
        with httpx.Client(base_url=live.url, timeout=5) as bystander:
            time.sleep(0.2)
            for _ in range(50):
                started = time.perf_counter()
                assert bystander.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(timeout=15)
    assert len(refused) >= 8, "the attack was not under way while the bystander measured"
    assert max(refused) < 8 * MIB
    # before the limit, one 128 MiB header pushed the p50 to 0.8 s and the max to 3.9 s
    assert statistics.median(latencies) < 0.05, latencies
    assert max(latencies) < 1, latencies


def test_a_malformed_request_gets_400_problem_json(live: Server) -> None:
    with socket.create_connection(address(live), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        data = read_until_closed(sock)
    assert_problem(data, 400, "http.bad_request")
    assert json.loads(parse_response(data)[2])["title"] == "Bad Request"


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers, _ = parse_response(head)
    await reader.readexactly(int(headers["content-length"]))
    return status


async def trickle_a_head(host: str, port: int) -> float | None:
    """Send a head one byte a second; how long the server let the connection live, None if it never cut it."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        while time.monotonic() - started < HEAD_TIMEOUT + 10:
            writer.write(b"a")
            try:
                if await asyncio.wait_for(reader.read(1), timeout=1) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic() - started
        return None
    finally:
        writer.close()


async def stay_silent(host: str, port: int) -> float | None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if await asyncio.wait_for(reader.read(1), timeout=HEAD_TIMEOUT + 10) == b"":
            return time.monotonic() - started
        return None
    finally:
        writer.close()


async def keep_alive_politely(host: str, port: int) -> tuple[list[int], float]:
    """Three requests on one connection over 21 s: the second head takes 14 s, pauses stay under keep-alive's 5 s."""
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-note: a head sent in pieces, a second apart\r\n\r\n"
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    statuses = []
    try:
        writer.write(request)
        statuses.append(await read_response(reader))
        await asyncio.sleep(3.5)
        for index in range(15):
            if index:
                await asyncio.sleep(1)
            writer.write(request[index * len(request) // 15 : (index + 1) * len(request) // 15])
        statuses.append(await read_response(reader))
        await asyncio.sleep(3.5)
        last = time.monotonic() - started  # past HEAD_TIMEOUT since the connection was made
        writer.write(request)
        statuses.append(await read_response(reader))
    finally:
        writer.close()
    return statuses, last


async def measure_healthz(url: str, seconds: float) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=5) as bystander:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            assert (await bystander.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.25)
    return latencies


async def test_slow_and_silent_heads_are_cut_at_20_s_while_others_are_served(live: Server) -> None:
    host, port = address(live)
    slow = [trickle_a_head(host, port) for _ in range(50)]
    silent = [stay_silent(host, port) for _ in range(10)]
    cut = asyncio.gather(*slow, *silent)
    polite = asyncio.ensure_future(keep_alive_politely(host, port))
    latencies = await measure_healthz(live.url, HEAD_TIMEOUT + 2)
    lifetimes = await asyncio.wait_for(cut, timeout=20)
    statuses, last_request_at = await asyncio.wait_for(polite, timeout=10)
    assert statuses == [200, 200, 200]
    assert last_request_at > HEAD_TIMEOUT
    assert all(lifetime is not None and HEAD_TIMEOUT - 0.5 <= lifetime <= HEAD_TIMEOUT + 5 for lifetime in lifetimes), (
        lifetimes
    )
    assert statistics.median(latencies) < 0.05, latencies
    assert max(latencies) < 1, latencies
