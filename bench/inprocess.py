"""What the in-process benches share: a migrated SQLite database, keel's bench settings, a minimal ASGI caller, and
instruction counts under valgrind's callgrind.

bench/request_profile.py, bench/stack_cpu.py and bench/paired.py drive keel's ASGI app directly (no server), 64
requests at a time.
"""

from __future__ import annotations

import gc
import os
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

NEVER_TRIPS = "1000000000/s burst 1000000000"
BENCH_SECRET = "keel-bench-only-hs256-secret-0123456789abcdef"  # noqa: S105  # a bench secret


async def migrated_sqlite_url(prefix: str) -> str:
    """A fresh SQLite database in a temporary directory, migrated to head."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from keel import db

    workdir = tempfile.mkdtemp(prefix=prefix)
    url = f"sqlite+aiosqlite:///{workdir}/keel.db"
    engine = create_async_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    return url


def bench_settings(url: str, **extra: Any) -> Any:
    """keel's Settings as bench/run.py serves it (limiter on and never tripping), with `extra` on top."""
    from keel.settings import Settings

    defaults = {"KEEL_JWT_SECRET": BENCH_SECRET, "KEEL_RATE_LIMIT": NEVER_TRIPS, "KEEL_AUTH_RATE_LIMIT": NEVER_TRIPS}
    return Settings(_env_file=None, DATABASE_URL=url, **(defaults | extra))


def get_caller(
    app: Any, path: str, headers: Sequence[tuple[bytes, bytes]], statuses: dict[int, int]
) -> Callable[[], Awaitable[None]]:
    """A coroutine function that sends one `GET path` with `headers` to `app` and counts its status in `statuses`."""
    base = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }

    async def one() -> None:
        scope = {**base, "headers": list(headers), "state": {}}
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    return one


async def call(app: Any, method: str, target: str, body: bytes, content_type: bytes) -> tuple[int, bytes]:
    """One request with a body (a sign-up, a login), outside what is measured: its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": target,
        "raw_path": target.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", content_type)],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["body"]


def under_callgrind(argv: list[str], out_dir: str) -> list[str]:
    """`argv` run under callgrind, counting nothing until the process asks (Callgrind.start), a file per thread."""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
    return [*valgrind, f"--callgrind-out-file={out_dir}/cg.%p", *argv]


class Callgrind:
    """This process's instruction count between two calls, when it runs as under_callgrind starts it.

    Counts repeat to within a few hundred instructions a request whatever else the machine does, where CPU time on
    a shared machine moves by tens of microseconds; they are not time (no cache misses, no kernel work).
    """

    def __init__(self, out_dir: str) -> None:
        self.pid = str(os.getpid())
        self.out_dir = out_dir
        self.dumps = 0

    def control(self, *options: str) -> None:
        subprocess.run(["callgrind_control", *options, self.pid], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self.control("--instr=on")
        self.dump()

    async def count(self, work: Callable[[], Awaitable[None]]) -> tuple[int, int]:
        """The instructions `work` takes, as dump() gives them, with the garbage collector held off (a collection's
        count would land in whichever block it falls in)."""
        gc.collect()
        gc.disable()
        try:
            self.dump()
            await work()
            return self.dump()
        finally:
            gc.enable()

    def dump(self) -> tuple[int, int]:
        """Instructions since the previous dump: the process's (every thread) and the main thread's (the loop's)."""
        self.control("--dump")
        self.dumps += 1
        counts = {}
        for path in Path(self.out_dir).glob(f"cg.{self.pid}.{self.dumps}-*"):  # a file per thread: -01 is the main
            text = path.read_text()
            counts[path.name.rsplit("-", 1)[1]] = int(text.split("\nsummary: ", 1)[1].split(None, 1)[0])
        return sum(counts.values()), counts["01"]
