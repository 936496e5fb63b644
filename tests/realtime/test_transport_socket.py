"""TransportSocket on a real uvicorn server (wsproto, as `keel serve` runs it) and a real WebSocket client.

The socket sheds per-connection memory uvicorn and wsproto keep for nothing once the connection is open (issue 16).
These fail when the internals it relies on move: `supports` must still find them, and the connection must still
work after they are gone (frames both ways, pings, a close).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect

from keel.http.server import KeelWSProtocol
from keel.realtime import websocket
from keel.realtime.websocket import TransportSocket
from tests.factories import make_claims
from tests.servers import free_port

CLAIMS = make_claims()


class App:
    """Accepts, wraps the connection in a TransportSocket, sends one frame, and echoes what the client sends."""

    def __init__(self) -> None:
        self.sockets: list[tuple[Any, TransportSocket]] = []
        self.received: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        protocol = TransportSocket.supports(send)
        assert protocol is not None, "uvicorn's WSProtocol no longer has what TransportSocket writes through"
        socket = TransportSocket(protocol, CLAIMS, send_queue=8)
        self.sockets.append((protocol, socket))
        socket.send(b'{"type":"hello"}')
        while (message := await receive())["type"] == "websocket.receive":
            self.received.append(message["text"])
            socket.send(message["text"].encode())


@pytest.mark.parametrize("ws", ["wsproto", KeelWSProtocol], ids=["uvicorn", "keel serve"])
async def test_an_open_socket_drops_its_handshake_and_shares_one_empty_waiters_deque(ws: Any) -> None:
    app = App()
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=ws, ws_per_message_deflate=False, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):  # uvicorn says when it is listening only through this flag
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with (
            connect(f"ws://127.0.0.1:{port}/ws", compression=None) as first,
            connect(f"ws://127.0.0.1:{port}/ws", compression=None) as second,
        ):
            assert await first.recv() == '{"type":"hello"}'
            assert await second.recv() == '{"type":"hello"}'
            (one, _), (two, _) = app.sockets
            assert one.conn.handshake is two.conn.handshake is websocket._SPENT_HANDSHAKE
            assert one.writable._waiters is two.writable._waiters is websocket._NO_WAITERS
            if ws is KeelWSProtocol:  # its instance dict shares its keys: 280 B, where uvicorn's own is 1 584 B
                assert sys.getsizeof(one.__dict__) < 1000, sorted(one.__dict__)
            # what remains still carries the connection: frames both ways, a ping, and the waiters stay empty
            await first.send("ping?")
            assert await first.recv() == "ping?"
            await asyncio.wait_for(await second.ping(), 5)
            await second.send("still here")
            assert await second.recv() == "still here"
            assert not websocket._NO_WAITERS
        for _ in range(100):  # the client's close reached the app, through the open connection's events
            if all(protocol.close_sent or protocol.disconnected for protocol, _ in app.sockets):
                break
            await asyncio.sleep(0.01)
        assert app.received == ["ping?", "still here"]
    finally:
        server.should_exit = True
        await serving
