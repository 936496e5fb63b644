"""Close realtime connections properly on SIGTERM, before the server closes them its own way.

uvicorn answers SIGTERM by closing every WebSocket with 1012 and only then runs the app's shutdown; SPEC §7 wants
1001 after in-flight publishes finish. So the first SIGTERM/SIGINT runs the drain, then hands the signal to the
handler that was there before (the server's), which proceeds as usual; a second signal is handed over at once.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Final

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def drain_on_signal(drain: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Install the handlers; returns the function that puts the previous ones back."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}
    tasks: set[asyncio.Task[None]] = set()  # the drain, held so it is not collected while it runs
    started = False

    def forward(sig: int, frame: FrameType | None) -> None:
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler != signal.SIG_IGN:  # the default action: restore it and raise the signal again
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    def start(sig: int) -> None:
        task = loop.create_task(drain())
        tasks.add(task)
        task.add_done_callback(lambda _: forward(sig, None))

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal started
        if started:
            forward(sig, frame)
        else:
            started = True
            loop.call_soon_threadsafe(start, sig)  # a signal handler may run in the middle of the loop's work

    for sig in SIGNALS:
        signal.signal(sig, on_signal)

    def uninstall() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return uninstall
