"""Stopping on SIGTERM (or Ctrl-C) in the order a load balancer and clients need (SPEC §7, §10).

uvicorn's own order (uvicorn.server.Server.shutdown): close the listener, close idle connections and every WebSocket
(with 1012), wait up to `timeout_graceful_shutdown` for open requests, then run the app's shutdown. keel puts its
steps in front of it, from the first signal:

1. readiness turns 503 (`Lifecycle.stopping`, read by /readyz); everything else is served as before;
2. `KEEL_SHUTDOWN_DELAY` passes (0 by default): time for a balancer that polls /readyz to stop sending here. On
   Kubernetes the pod's `preStop` sleep does this job before the signal even arrives (deploy/k8s), so 0 fits;
3. the listener closes: no new connections (requests on open keep-alive connections are still answered);
4. the drain (keel.realtime.hub.Hub.drain): in-flight publishes, WebSocket and REST, commit, are answered and reach
   this instance's followers; then every socket gets 1001 and every SSE stream ends;
5. the signal goes on to uvicorn: open requests finish within keel.cli.GRACEFUL_SHUTDOWN, then the lifespan's
   shutdown closes the pools and flushes traces. Under `--server granian` the signal goes on to Granian's worker
   instead (keel.http.granian hands Granian's handler over to this chain), which then stops the same way.

Another SIGTERM while stopping changes nothing (with `--workers` the supervisor passes on the one the whole process
group got); a second Ctrl-C goes to uvicorn at once, which then stops without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Final

from uvicorn.server import Server

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger("keel.http")


class Lifecycle:
    """Whether the server is stopping: /readyz answers 503 from the first signal on."""

    def __init__(self) -> None:
        self.stopping = False


def stop_on_signal(
    lifecycle: Lifecycle, drain: Callable[[], Coroutine[Any, Any, None]], *, delay: float = 0.0
) -> Callable[[], None]:
    """Install the handlers; returns the function that puts the previous ones back."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}
    tasks: set[asyncio.Task[None]] = set()  # the stop, held so it is not collected while it runs

    def forward(sig: int, frame: FrameType | None) -> None:
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler != signal.SIG_IGN:  # the default action: restore it and raise the signal again
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def stop(sig: int) -> None:
        lifecycle.stopping = True
        log.info("stopping: readiness is 503; closing the listener in %g s", delay)
        if delay:
            await asyncio.sleep(delay)
        # uvicorn's server owns the handler keel replaced (`servers` is its private list of listeners; pyproject pins
        # uvicorn's minor version and tests/test_lifecycle.py fails if new connections are still accepted). Not
        # found (a test's in-process app): there is no listener to close, and the drain must run all the same.
        server = getattr(previous[sig], "__self__", None)
        if isinstance(server, Server):
            for listener in getattr(server, "servers", ()):
                listener.close()
        await drain()

    def start(sig: int) -> None:
        task = loop.create_task(stop(sig))
        tasks.add(task)
        task.add_done_callback(lambda _: forward(sig, None))

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if not lifecycle.stopping:
            lifecycle.stopping = True
            loop.call_soon_threadsafe(start, sig)  # a signal handler may run in the middle of the loop's work
        elif sig == signal.SIGINT:
            forward(sig, frame)

    for sig in SIGNALS:
        signal.signal(sig, on_signal)

    def uninstall() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return uninstall
