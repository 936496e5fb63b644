"""uvloop whose TCP servers accept every waiting connection each time the listening socket is ready, as asyncio's
own loop does.

libuv accepts one connection per loop iteration since libuv/libuv#3696 (uvloop 0.23 bundles libuv 1.52). An
iteration of a busy keel serves every ready connection's request first (13 ms at 64 busy connections, ~50 ms at
256), so a burst of N new connections waits N iterations to be accepted, with their first requests queued in the
kernel: at the start of each wrk run, up to 215 of 256 connections sat established but unaccepted for 1.1-1.5 s,
and wrk's p99 was 15-30x its p50 (BENCHMARKS.md, 2026-12-04 17:17). On asyncio's loop, which accepts up to the
backlog per readiness, no connection waited. This loop keeps uvloop for everything else (its fan-out and
per-socket memory are what keel's realtime figures were measured on) and serves plain TCP listeners the asyncio
way: a reader on the listening socket accepts until the queue is empty and hands each connection to uvloop's
`connect_accepted_socket`, which builds the transport uvloop's own server would (TCP_NODELAY included).

Written here because neither uvloop nor uvicorn offers it. uvicorn takes a loop factory by import string (public
since 0.36: keel.cli passes this class); a listener with TLS or options beyond uvicorn's goes to uvloop's own
server unchanged. tests/http/test_accept.py fails if uvloop accepts in a loop again, so this can go then.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from asyncio import constants
from collections.abc import Callable, Iterable
from typing import Any, Final

import uvloop

log = logging.getLogger("keel.http")

# accept() failing for want of a resource the process or system will get back: retry after a pause, as asyncio does
# (on Linux the listening socket stays readable, so a reader left in place would spin)
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class GreedyAcceptLoop(uvloop.Loop):
    """uvloop with asyncio's accept for plain TCP listeners (the module's docstring says why)."""

    async def create_server(  # type: ignore[override]  # the same call, narrowed to what is served here
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        **options: Any,
    ) -> asyncio.AbstractServer:
        if ssl is None and not options and (sock is None or sock.family in (socket.AF_INET, socket.AF_INET6)):
            server = GreedyServer(self, protocol_factory, [sock] if sock else _bound(host, port), backlog)
            await server.start_serving()
            return server
        # TLS, a Unix socket, options uvicorn does not pass: uvloop's own server
        return await super().create_server(
            protocol_factory,
            host,
            port,  # type: ignore[arg-type]  # one call for both of uvloop's overloads (host and port, or sock)
            sock=sock,  # type: ignore[arg-type]
            backlog=backlog,
            ssl=ssl,
            **options,
        )


class GreedyServer(asyncio.AbstractServer):
    """Listening TCP sockets served by a reader each; closing stops accepting and closes them (connections already
    accepted are their protocol's to close, as with asyncio's Server)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sockets: Iterable[socket.socket],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._sockets = tuple(sockets)
        self._backlog = backlog  # connections accepted per readiness at most, as asyncio bounds it
        self._is_serving = False
        self._closed = loop.create_future()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed.done() else self._sockets

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._is_serving

    async def start_serving(self) -> None:
        if self._is_serving or self._closed.done():
            return
        self._is_serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)  # a socket handed in (uvicorn's workers share one) may be bound only
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await asyncio.shield(self._closed)

    def close(self) -> None:
        if self._closed.done():
            return
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._is_serving = False
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                connection, _address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # the queue is empty, or the client left before its turn
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    raise  # the loop's exception handler logs it; the reader stays
                log.warning(
                    "cannot accept connections (%s): retrying in %d s", error.strerror, constants.ACCEPT_RETRY_DELAY
                )
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(constants.ACCEPT_RETRY_DELAY, self._resume, sock)
                return
            connection.setblocking(False)
            self._loop.create_task(self._connect(connection))

    def _resume(self, sock: socket.socket) -> None:
        if self._is_serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def _connect(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, connection)
        except Exception:  # the connection only: the server goes on accepting
            log.exception("cannot serve an accepted connection")
            connection.close()


def _bound(host: str | None, port: int | None) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to (all interfaces for None), as asyncio binds them."""
    sockets: list[socket.socket] = []
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # one socket per family, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
