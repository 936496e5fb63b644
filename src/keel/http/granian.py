"""`keel serve --server granian`: keel under Granian, with SIGTERM handed to keel's own drain (keel.http.shutdown).

Granian serves plain HTTP with less CPU per request than uvicorn, but holds ~10x the memory per idle WebSocket and
stops at 1 024 SSE streams (BENCHMARKS.md); deploy/ therefore routes /ws and /events to uvicorn instances and the
rest here. What stays the same as on uvicorn (SPEC §2, §5, §7, §9): keel's graceful drain on SIGTERM and exit 0,
keel's own trusted-proxy rule (Granian rewrites no client address), `--workers` with metrics added up across
workers, keel's access log (Granian's is off). What differs, and is documented in README.md: Granian answers an
over-long request head with a bare 431 and a malformed request with a bare 400 (not problem+json), sends
`server: granian`, and its listener stays open while keel drains (readiness is 503 meanwhile).

The signal hand-over. In each worker Granian calls `granian._signals.set_loop_signals(loop)` and stops serving as
soon as a SIGTERM arrives, so keel's drain (installed by the lifespan, which Granian starts after that call) would
race the worker's exit. keel replaces that function, in the worker before Granian calls it, with Granian's own
portable variant: a plain `signal.signal` handler that sets Granian's stop event. keel's lifespan then finds that
handler as "the previous one" and calls it once the drain is done, as it does uvicorn's. `granian._signals` is
private: pyproject pins granian's minor version and tests/test_granian.py fails when it moves; without it
(`_handoff_point` returns None) Granian keeps its own handler and keel drains from the lifespan's shutdown instead.
"""

from __future__ import annotations

import importlib
import logging
import signal
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any, Final

from keel.http.server import HEAD_LIMIT, HEAD_TIMEOUT

log = logging.getLogger("keel.http")

TARGET: Final = "keel.asgi:app"
SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
# hyper's read buffer bounds the request head (the smallest it takes is 8 KiB); a head past it gets a bare 431
MAX_BUFFER_SIZE: Final = HEAD_LIMIT


def _handoff_point() -> ModuleType | None:
    """granian._signals if it still has the shape relied on, else None (the fallback)."""
    try:
        module = importlib.import_module("granian._signals")
        worker_signal = importlib.import_module("granian._granian").WorkerSignal
    except (ImportError, AttributeError):
        return None
    if not callable(getattr(module, "set_loop_signals", None)) or not callable(worker_signal):
        return None
    return module


def _plain_signals(worker_signal: Callable[[], Any]) -> Callable[[object], Any]:
    """Granian's set_loop_signals without the loop: a `signal.signal` handler keel's lifespan can chain to."""

    def set_loop_signals(loop: object) -> Any:
        event = worker_signal()

        def stop(sig: int, frame: FrameType | None) -> None:
            event.set()

        for sig in SIGNALS:
            signal.signal(sig, stop)
        return event

    return set_loop_signals


def hand_signals_to_keel() -> bool:
    """Make Granian's worker stop when keel's drain passes the signal on; False if granian moved (the fallback)."""
    module = _handoff_point()
    if module is None:
        log.warning("granian._signals has moved: keel drains on Granian's shutdown, not before it")
        return False
    worker_signal = importlib.import_module("granian._granian").WorkerSignal
    module.set_loop_signals = _plain_signals(worker_signal)  # type: ignore[attr-defined]
    return True


def load_app(target: str) -> Any:
    """Granian's target loader, run in each worker before it serves: the hand-over, then keel's app factory."""
    hand_signals_to_keel()
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)()


def run(*, host: str, port: int, workers: int, stop_timeout: int) -> None:
    """Serve keel.asgi:app under Granian until SIGTERM or Ctrl-C; each worker drains as on uvicorn."""
    import multiprocessing

    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    server = Granian(
        TARGET,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        http1_settings=HTTP1Settings(header_read_timeout=int(HEAD_TIMEOUT * 1000), max_buffer_size=MAX_BUFFER_SIZE),
        websockets=True,
        # keel writes its own access log and configures logging in each worker (keel.asgi)
        log_access=False,
        log_enabled=False,
        # as uvicorn's supervisor does: a worker that dies is replaced, not the whole server stopped
        respawn_failed_workers=True,
        # keel's drain plus the wait for open requests, then the worker is killed
        workers_kill_timeout=stop_timeout,
        factory=True,
    )
    if workers > 1:
        # Granian forks its workers, which would inherit a prometheus_client imported before keel.cli set its
        # multiprocess directory; fresh interpreters, as uvicorn's, read it on import and add up in one scrape
        multiprocessing.set_start_method("spawn", force=True)
    server.serve(target_loader=load_app)
