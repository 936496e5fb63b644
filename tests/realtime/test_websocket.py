"""/ws against a real `keel serve` with a real WebSocket client (SPEC §7), on both backends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Backend
from tests.realtime.conftest import Live, backend_env, receive, refused, send, start_live, subscribe
from tests.servers import keel_serve, run_keel, sign_up


async def test_a_handshake_without_valid_auth_is_refused_before_accept(live: Live) -> None:
    status, problem = await refused(live.ws_url)
    assert status == 401
    assert problem["code"] == "realtime.authentication_required"
    status, problem = await refused(live.ws_url, additional_headers={"Authorization": "Bearer nonsense"})
    assert (status, problem["code"]) == (401, "accounts.invalid_token")
    status, problem = await refused(f"{live.ws_url}?ticket=never-issued")
    assert (status, problem["code"]) == (401, "accounts.invalid_token")


async def test_header_and_ticket_auth_and_a_ticket_works_once(live: Live) -> None:
    async with live.socket() as ws:
        await subscribe(ws, live.channel)
    ticket = live.ticket()
    async with connect(f"{live.ws_url}?ticket={ticket}") as ws:
        await send(ws, type="ping", ref=1)
        assert await receive(ws) == {"type": "pong", "ref": 1}
    status, _ = await refused(f"{live.ws_url}?ticket={ticket}")
    assert status == 401
    assert ticket not in live.server.output()  # uvicorn logs the request line; the ticket is redacted from it


async def test_every_subscriber_and_the_sender_get_each_publish(live: Live) -> None:
    async with live.socket() as sender, live.socket() as first, live.socket() as second:
        for ws in (sender, first, second):
            assert (await subscribe(ws, live.channel))["last_seq"] == 0
        await send(sender, type="publish", channel=live.channel, body="over ws", ref="r-1")
        live.post("over rest")
        for ws in (first, second):
            got = [await receive(ws), await receive(ws)]
            assert [(f["type"], f["message"]["seq"], f["message"]["body"]) for f in got] == [
                ("message", 1, "over ws"),
                ("message", 2, "over rest"),
            ]
            assert got[0]["channel"] == live.channel
            assert got[0]["message"]["author"]["username"] == "ada"
        frames = [await receive(sender) for _ in range(3)]
        published = next(f for f in frames if f["type"] == "published")
        assert published["ref"] == "r-1"
        assert published["message"]["seq"] == 1
        assert [f["message"]["seq"] for f in frames if f["type"] == "message"] == [1, 2]


async def test_since_replays_history_then_live_without_gap_or_duplicate(live: Live) -> None:
    for i in range(30):
        live.post(f"old {i}")
    stop = asyncio.Event()

    async def keep_publishing() -> int:
        async with httpx.AsyncClient(base_url=live.url, headers=live.auth) as client:
            count = 0
            while not stop.is_set() or count < 20:
                response = await client.post(f"/api/v1/channels/{live.channel}/messages", json={"body": "new"})
                assert response.status_code == 201
                count += 1
            return count

    writer = asyncio.create_task(keep_publishing())
    await asyncio.sleep(0.05)
    async with live.socket() as ws:
        subscribed = await subscribe(ws, live.channel, since=10)
        assert subscribed["last_seq"] >= 30
        stop.set()
        total = 30 + await writer
        seqs = [(await receive(ws))["message"]["seq"] for _ in range(total - 10)]
        assert seqs == list(range(11, total + 1))
        await send(ws, type="ping")
        assert await receive(ws) == {"type": "pong"}  # and nothing else was queued before it


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(live: Live) -> None:
    async with live.socket() as ws:
        cases: list[tuple[str | bytes, str, Any]] = [
            ("not json", "bad_frame", None),
            ("[1, 2]", "bad_frame", None),
            (json.dumps({"ref": "a"}), "bad_frame", "a"),
            (json.dumps({"type": "shout", "ref": "b"}), "unknown_type", "b"),
            (json.dumps({"type": "subscribe", "channel": "not-a-uuid", "ref": 3}), "invalid", 3),
            (json.dumps({"type": "publish", "channel": live.channel, "body": "", "ref": "c"}), "invalid", "c"),
            (json.dumps({"type": "publish", "channel": live.channel, "body": "x" * 4001}), "invalid", None),
            (json.dumps({"type": "subscribe", "channel": live.channel, "since": 2**63, "ref": "e"}), "invalid", "e"),
            (json.dumps({"type": "subscribe", "channel": live.channel, "sinse": 5, "ref": "f"}), "invalid", "f"),
            (
                json.dumps({"type": "subscribe", "channel": "00000000-0000-4000-8000-000000000000", "ref": "d"}),
                "not_found",
                "d",
            ),
            (
                json.dumps({"type": "publish", "channel": "00000000-0000-4000-8000-000000000000", "body": "x"}),
                "not_found",
                None,
            ),
            (b"\x00binary", "bad_frame", None),
        ]
        for frame, code, ref in cases:
            await ws.send(frame)
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", code), (frame, error)
            assert error.get("ref") == ref
            assert error["detail"]
        await send(ws, type="ping", ref="still-open")
        assert await receive(ws) == {"type": "pong", "ref": "still-open"}
    assert live.channel_seq() == 0  # no invalid publish left a row


async def test_a_deeply_nested_frame_gets_bad_frame_and_the_socket_stays_open(live: Live) -> None:
    deep = "[" * 30_000 + "]" * 30_000
    hostile = [
        "[" * 30_000,
        deep,
        json.dumps({"type": "publish", "channel": live.channel, "body": "placeholder"}).replace('"placeholder"', deep),
        '{"type":"ping","ref":' + deep + "}",
    ]
    async with live.socket() as ws:
        for frame in hostile:
            assert len(frame.encode()) < 64 * 1024  # under the frame limit: only the nesting is hostile
            await ws.send(frame)
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", "bad_frame"), error
        await send(ws, type="ping", ref="still-open")
        assert await receive(ws) == {"type": "pong", "ref": "still-open"}
    assert live.channel_seq() == 0


async def test_a_nul_in_a_published_body_is_invalid_and_nothing_is_stored(live: Live) -> None:
    # on the scaled backend this reached PostgreSQL, which cannot store NUL in text, and dropped the socket
    async with live.socket() as ws:
        await subscribe(ws, live.channel)
        for body in ("\x00", "before\x00after", "x" * 3999 + "\x00"):
            await send(ws, type="publish", channel=live.channel, body=body, ref="nul")
            error = await receive(ws)
            assert (error["type"], error["code"], error["ref"]) == ("error", "invalid", "nul"), error
            assert "body" in error["detail"]
        await send(ws, type="publish", channel=live.channel, body="clean", ref="ok")
        replies = [await receive(ws), await receive(ws)]
        assert sorted(r["type"] for r in replies) == ["message", "published"]
    assert live.channel_seq() == 1  # only the clean publish was stored


async def test_unsubscribe_stops_delivery(live: Live) -> None:
    async with live.socket() as ws:
        await subscribe(ws, live.channel)
        await send(ws, type="unsubscribe", channel=live.channel)
        assert await receive(ws) == {"type": "unsubscribed", "channel": live.channel}
        live.post("unseen")
        await send(ws, type="ping")
        assert await receive(ws) == {"type": "pong"}


async def test_a_frame_over_64_kib_closes_with_1009(live: Live) -> None:
    async with live.socket(max_size=None) as ws:
        await ws.send("x" * (70 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_publishes_over_the_rate_limit_get_rate_limited_and_the_socket_stays_open(
    backend: Backend, tmp_path: Path
) -> None:
    # 20/min burst 12: the sign-up, log-in, channel and connect use 4; 8 publishes then pass, the rest do not
    with keel_serve(backend_env(backend, KEEL_RATE_LIMIT="20/min burst 12"), tmp_path) as server:
        live = start_live(server)
        async with live.socket() as ws:
            results = []
            for i in range(12):
                await send(ws, type="publish", channel=live.channel, body=f"{i}", ref=i)
                results.append(await receive(ws))
            kinds = [r["type"] if r["type"] != "error" else r["code"] for r in results]
            assert "published" in kinds, kinds
            assert kinds[-1] == "rate_limited", kinds
            assert results[-1]["ref"] == 11
            assert "retry in" in results[-1]["detail"]
            await send(ws, type="ping")
            assert await receive(ws) == {"type": "pong"}
        # the budget is spent: opening a socket or a stream is refused before it opens
        with pytest.raises(InvalidStatus) as refusal:
            async with live.socket():
                pass
        assert refusal.value.response.status_code == 429
        assert int(refusal.value.response.headers["retry-after"]) >= 1
        assert json.loads(refusal.value.response.body)["code"] == "rate_limited"
        async with httpx.AsyncClient(base_url=live.url, headers=live.auth) as client:
            stream = await client.get("/events", params={"channel": live.channel})
        assert stream.status_code == 429
        assert "retry-after" in stream.headers


def gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


async def test_a_slow_consumer_is_closed_with_1013_and_never_slows_the_others(backend: Backend, tmp_path: Path) -> None:
    with keel_serve(backend_env(backend, KEEL_WS_SEND_QUEUE="16"), tmp_path) as server:
        live = start_live(server)
        # the slow client: a raw socket with a tiny receive buffer that completes the handshake, subscribes, and
        # then reads nothing
        host, port = live.url.removeprefix("http://").split(":")
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((host, int(port)))
        slow.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: {live.auth['Authorization']}\r\n\r\n".encode()
        )
        assert slow.recv(4096).startswith(b"HTTP/1.1 101")
        payload = json.dumps({"type": "subscribe", "channel": live.channel}).encode()
        slow.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload)  # masked, zero mask

        async with live.socket() as fast, live.socket() as publisher:
            await subscribe(fast, live.channel)
            assert gauge(live.url, "keel_ws_connections") == 3
            sent = 0
            while gauge(live.url, "keel_ws_connections") == 3:  # until the slow one is let go
                assert sent < 2000, "the slow consumer was never closed"
                for _ in range(50):
                    # 12 KB frames (the kernel's socket buffers take a few MB before the server's backlog grows)
                    await send(publisher, type="publish", channel=live.channel, body="€" * 4000, ref=sent)
                    assert (await receive(publisher))["type"] == "published"
                    sent += 1
                seqs = [(await receive(fast))["message"]["seq"] for _ in range(50)]
                assert seqs == list(range(sent - 49, sent + 1))  # the fast one keeps up, in order

        # behind its backlog the slow socket finds a close frame with 1013 (read now, before the close timeout
        # drops the connection)
        slow.settimeout(10)
        data = bytearray()
        while chunk := slow.recv(1 << 16):
            data += chunk
        slow.close()
        close = data.rfind(b"\x88")
        assert close > 0, data[-64:]
        assert data[close + 2 : close + 4] == (1013).to_bytes(2, "big"), data[-64:]
        assert data.count(b'"type":"message"') < sent


async def test_logout_closes_the_sessions_sockets_with_4401(live: Live) -> None:
    async with live.socket() as ws:
        await subscribe(ws, live.channel)
        started = time.monotonic()
        live.log_out()
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
        assert time.monotonic() - started < 5


async def test_sigterm_closes_sockets_with_1001(live: Live) -> None:
    async with live.socket() as ws:
        await subscribe(ws, live.channel)
        os.killpg(live.server.process.pid, signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    live.server.process.wait(timeout=15)  # uvicorn re-raises the signal once it has shut down cleanly
    assert "Application shutdown complete" in live.server.output()


async def test_metrics_count_connections_and_deliveries(live: Live) -> None:
    def metric(name: str) -> float:
        return gauge(live.url, name)

    async with live.socket() as ws:
        await subscribe(ws, live.channel)
        assert metric("keel_ws_connections") == 1
        live.post("counted")
        await receive(ws)
        assert metric("keel_realtime_messages_total") == 1
    for _ in range(50):
        if metric("keel_ws_connections") == 0:
            break
        await asyncio.sleep(0.05)
    assert metric("keel_ws_connections") == 0


def test_a_client_that_misses_a_protocol_pong_is_closed_with_1011(tmp_path: Path) -> None:
    # once, on the embedded backend: it takes the 20 s ping interval plus the 20 s pong timeout
    env: dict[str, str | None] = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"}
    assert run_keel("migrate", env=env, cwd=tmp_path).returncode == 0
    with keel_serve(env, tmp_path) as server:
        tokens = sign_up(server.url)
        host, port = server.url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {tokens['access_token']}\r\n\r\n".encode()
        )
        assert client.recv(4096).startswith(b"HTTP/1.1 101")
        client.settimeout(50)
        started = time.monotonic()
        data = bytearray()
        while chunk := client.recv(4096):  # never answers: a ping (0x89) comes, then the close (0x88)
            data += chunk
        client.close()
        assert data[:2] == b"\x89\x04", data  # the protocol ping (a 4-byte payload), after 20 s
        assert data[6] == 0x88, data  # then, unanswered, the close frame
        assert data[8:10] == (1011).to_bytes(2, "big"), data
        assert 38 < time.monotonic() - started < 48
