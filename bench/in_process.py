"""keel's ASGI app driven in this process, with no server: the set-up bench/paired.py and bench/request_profile.py
share. `create_app(Settings(...))` as `keel serve` configures it for bench/run.py (a fresh migrated SQLite file, the
limiter on and never tripping, keel's own records at `warning`), and a minimal ASGI caller for bodiless requests."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar import Litestar

NEVER_TRIPS = "1000000000/s burst 1000000000"
CONCURRENCY = 64  # requests at a time (asyncio.gather) in both scripts


async def bench_app(prefix: str, **settings: str) -> Litestar:
    """The app over a fresh migrated SQLite database in a new temporary directory (`prefix`); `settings` add to, or
    override, the bench's own."""
    # imported here: bench/paired.py's parent process only starts children and never needs keel
    from sqlalchemy.ext.asyncio import create_async_engine

    from keel import db
    from keel.logs import configure_logging
    from keel.main import create_app
    from keel.settings import Settings

    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix=prefix)}/keel.db"
    engine = create_async_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    configured = Settings(
        _env_file=None,
        DATABASE_URL=url,
        KEEL_JWT_SECRET="keel-bench-only-hs256-secret-0123456789abcdef",  # noqa: S106  # a bench secret
        KEEL_RATE_LIMIT=NEVER_TRIPS,
        KEEL_AUTH_RATE_LIMIT=NEVER_TRIPS,
        **settings,  # type: ignore[arg-type]  # names of SPEC §1, checked by Settings at run time
    )
    configure_logging(configured.log_format, "warning")  # keel's other records stay quiet
    return create_app(configured)


def http_scope(path: str, agent: bytes) -> dict[str, Any]:
    """A `GET path` scope as uvicorn builds it; each request copies it (`state` and `headers` are its own)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", agent), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def get(app: Litestar, template: dict[str, Any], statuses: dict[int, int]) -> None:
    """One bodiless request from `template` through the whole app, its status counted in `statuses`."""
    scope = {**template, "headers": list(template["headers"]), "state": {}}
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

    # Litestar.__call__ puts itself in the scope, then the edge runs
    await app(scope, receive, send)  # type: ignore[arg-type]
