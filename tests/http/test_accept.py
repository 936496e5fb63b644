"""keel.http.accept's loop: a burst of connections accepted at once, served by uvloop's own transports."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import uvloop
from uvicorn.config import Config

from keel import cli
from keel.http.accept import GreedyAcceptLoop, GreedyServer

BURST = 100


class Recording(asyncio.Protocol):
    """Echoes what it reads; records its transport."""

    made: list[asyncio.Transport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's are not asyncio.Transport subclasses
        Recording.made.append(self.transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.fixture(autouse=True)
def _fresh_record() -> None:
    Recording.made = []


def close_made() -> None:
    for transport in Recording.made:
        transport.close()


def iterations_to_accept(loop_class: Callable[[], asyncio.AbstractEventLoop], count: int) -> int:
    """Loop iterations a server on `loop_class` takes to accept `count` connections that were all waiting."""
    loop = loop_class()
    clients_left: list[socket.socket] = []
    try:
        server = loop.run_until_complete(loop.create_server(Recording, "127.0.0.1", 0, backlog=1024))
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]  # the kernel queues them
        clients_left.extend(clients)
        iterations = 0
        done = loop.create_future()

        def tick() -> None:
            nonlocal iterations
            iterations += 1
            if len(Recording.made) < count and iterations < 10 * count:
                loop.call_soon(tick)
            else:
                done.set_result(None)

        loop.call_soon(tick)
        loop.run_until_complete(done)
        assert len(Recording.made) == count
        server.close()
        return iterations
    finally:
        for client in clients_left:
            client.close()
        close_made()
        loop.run_until_complete(asyncio.sleep(0))  # the transports' close callbacks
        loop.close()


def test_a_burst_of_waiting_connections_is_accepted_in_one_wake_up() -> None:
    # the wake-up accepts all; their tasks and connection_made callbacks run in the iterations after it
    assert iterations_to_accept(GreedyAcceptLoop, BURST) <= 5


def test_uvloop_alone_still_accepts_one_connection_per_iteration() -> None:
    """Why keel.http.accept exists: should this fail, uvloop accepts in a loop again, and the module can go."""
    assert iterations_to_accept(uvloop.Loop, BURST) >= BURST


def test_accepted_connections_are_uvloop_transports_without_nagle() -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Recording, "127.0.0.1", 0)
        assert isinstance(server, GreedyServer)
        assert server.is_serving()
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        (transport,) = Recording.made
        assert type(transport).__module__.startswith("uvloop")
        assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
        server.close()
        close_made()

    with asyncio.Runner(loop_factory=GreedyAcceptLoop) as runner:
        runner.run(main())


def test_closing_stops_accepting_and_closes_the_listeners() -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Recording, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        served = asyncio.create_task(server.serve_forever())
        server.close()
        await server.wait_closed()
        await served
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    with asyncio.Runner(loop_factory=GreedyAcceptLoop) as runner:
        runner.run(main())


def test_a_bound_socket_handed_in_is_listened_on() -> None:
    """uvicorn's workers share one socket its supervisor bound."""

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(Recording, sock=sock, backlog=64)
        assert server.sockets == (sock,)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        server.close()
        close_made()
        assert sock.fileno() == -1

    with asyncio.Runner(loop_factory=GreedyAcceptLoop) as runner:
        runner.run(main())


def test_tls_and_unix_listeners_are_uvloops_own(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        tls = await loop.create_server(
            Recording, "127.0.0.1", 0, ssl=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        )
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(str(tmp_path / "keel.sock"))
        handed = await loop.create_server(Recording, sock=unix)
        for server in (tls, handed):
            assert not isinstance(server, GreedyServer)
            server.close()

    with asyncio.Runner(loop_factory=GreedyAcceptLoop) as runner:
        runner.run(main())


# The server: once every descriptor is taken, it frees them when the accept failure is logged; the connection
# waiting all along must then be accepted on the retry.
OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import asyncio, logging, os, resource
    from keel.http.accept import GreedyAcceptLoop

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fillers = []

    class Freeing(logging.Handler):
        def emit(self, record):
            print(record.getMessage(), flush=True)
            while fillers:
                os.close(fillers.pop())

    logging.getLogger("keel.http").addHandler(Freeing())

    async def main():
        accepted = asyncio.Event()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set()

        server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0)
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.wait_for(accepted.wait(), 10)
        print("accepted", flush=True)

    with asyncio.Runner(loop_factory=GreedyAcceptLoop) as runner:
        runner.run(main())
    """
)


def test_running_out_of_descriptors_pauses_accepting_until_they_are_back() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)):
            out, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    assert out.splitlines() == ["cannot accept connections (Too many open files): retrying in 1 s", "accepted"]


def test_keel_serve_runs_uvicorn_on_this_loop() -> None:
    factory = Config(app=lambda: None, loop=cli.UVICORN_LOOP).get_loop_factory()
    assert factory is GreedyAcceptLoop
