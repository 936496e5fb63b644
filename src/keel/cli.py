"""The `keel` command: serve, migrate, openapi, asyncapi (SPEC §1)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

import click
import msgspec
import uvicorn
from asyncpg.exceptions import CannotConnectNowError
from sqlalchemy.ext.asyncio import AsyncEngine

from keel import db, metrics
from keel.accounts import service as accounts
from keel.accounts.models import User
from keel.accounts.passwords import PasswordHasher
from keel.accounts.schemas import UserCreate
from keel.errors import KeelError
from keel.http import granian
from keel.identity.keys import generate_ed25519_keypair, load_keyring
from keel.logs import configure_logging
from keel.main import VERSION, create_app, keyring_options, openapi_document
from keel.realtime import asyncapi as realtime_asyncapi
from keel.realtime.hub import DRAIN_TIMEOUT
from keel.realtime.websocket import MAX_FRAME_BYTES, PING_INTERVAL, PING_TIMEOUT
from keel.settings import ConfigError, Settings, load_settings
from keel.shared import open_backends

# uvloop, accepting every waiting connection per wake-up as asyncio does (keel.http.accept says why)
UVICORN_LOOP: Final = "keel.http.accept:GreedyAcceptLoop"
# httptools with keel's limits, named, not imported: a worker of --workers N gets uvicorn's config pickled, and a class
# in it is imported before the worker answers its supervisor's health ping. keel's import takes seconds on a loaded
# host: past the ping's 5 s the worker is killed as hung, and each replacement too (CI saw one worker serve alone).
# Named, it is imported once the worker answers pings, with the app.
UVICORN_HTTP: Final = "keel.http.server:KeelHttpToolsProtocol"
UVICORN_WS: Final = "keel.http.server:KeelWSProtocol"
# seconds uvicorn waits for open connections after keel's own drain (keel.realtime.hub.DRAIN_TIMEOUT) on SIGTERM;
# deploy/ sizes its stop grace periods from both
GRACEFUL_SHUTDOWN = 10
# start-up's retries while the database does not answer: 0.5, 1, 2, 4, then every 5 s, within KEEL_DATABASE_WAIT
FIRST_RETRY = 0.5
LAST_RETRY = 5.0


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"keel: {message}", err=True)
    sys.exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    """Settings, or exit 2 with one line naming the bad variable: keel never starts half-configured."""
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}", code=2)


@click.group()
@click.version_option(package_name="keel")
def main() -> None:
    """keel: accounts, JWT auth, rate limiting and realtime channels over HTTP."""


class _Unreachable(Exception):
    """The database did not answer (yet): refused, timed out, or still starting up."""


def _unreachable(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError | TimeoutError | CannotConnectNowError):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__  # type: ignore[assignment]
    return False


async def _schema_problem(engine: AsyncEngine, *, retry: bool = False) -> str | None:
    try:
        database, code = await db.schema_revisions(engine)
    except Exception as exc:  # any failure to read the schema version means we cannot serve; say why
        if retry and _unreachable(exc):
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from None
        return f"cannot reach the database ({type(exc).__name__}: {exc})"
    if database == code:
        return None
    if not database:
        return "the database has no schema yet; run `keel migrate` first"
    if database - db.known_revisions():
        return f"the database is at revision {', '.join(sorted(database))}, which this keel does not know; upgrade keel"
    behind = f"{', '.join(sorted(database))} < {', '.join(sorted(code))}"
    return f"the database schema is behind ({behind}); run `keel migrate` first"


async def _check_database(url: str, wait: float) -> str | None:
    """What keeps keel from serving on this database, or None; waits up to `wait` seconds for one that does not
    answer yet (a container started beside it, a restart), with one line per retry and no traceback."""
    deadline = time.monotonic() + wait
    delay = FIRST_RETRY
    for attempt in itertools.count(1):
        engine = db.create_engine(url, pool_size=1)
        try:
            return await _schema_problem(engine, retry=True)
        except _Unreachable as exc:
            if time.monotonic() + delay > deadline:
                return f"cannot reach the database after {attempt} tries in {wait:g} s ({exc})"
            click.echo(f"keel: database not reachable ({exc}); try {attempt + 1} in {delay:g} s", err=True)
        finally:
            await engine.dispose()
        await asyncio.sleep(delay)
        delay = min(delay * 2, LAST_RETRY)
    raise AssertionError("unreachable")


@main.command()
@click.option("--host", help="Interface to bind [KEEL_HOST, 127.0.0.1].")
@click.option("--port", help="Port to bind [KEEL_PORT, 3000].")
@click.option("--workers", help="Worker processes [KEEL_WORKERS, 1]; more than one needs REDIS_URL.")
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    help="uvicorn for WebSocket/SSE, granian for plain HTTP (less CPU per request) [KEEL_SERVER, uvicorn].",
)
def serve(host: str | None, port: str | None, workers: str | None, server: str | None) -> None:
    """Serve the API (the schema must be current: see `keel migrate`)."""
    settings = settings_or_exit(KEEL_HOST=host, KEEL_PORT=port, KEEL_WORKERS=workers, KEEL_SERVER=server)
    if settings.workers > 1 and settings.redis_url is None:
        fail(
            f"--workers {settings.workers} needs REDIS_URL: the in-process broker, cache and limiter are per "
            "process, so workers would not share them",
            code=2,
        )
    if problem := asyncio.run(_check_database(settings.database_url, settings.database_wait.total_seconds())):
        fail(problem)
    try:
        load_keyring(**keyring_options(settings))
    except ValueError as exc:
        fail(str(exc), code=2)
    configure_logging(settings.log_format, settings.log_level)
    base = f"http://{settings.host}:{settings.port}"
    click.echo(f"keel: serving on {base} with {settings.server} (docs: {base}/swagger-ui)", err=True)
    run = _run_granian if settings.server == "granian" else _run_uvicorn
    if settings.workers == 1:
        run(settings)
        return
    # Workers add up in one scrape (SPEC §9): each keeps its metrics in files under one fresh directory, which
    # prometheus_client finds through its own variable. The only environment keel writes: uvicorn spawns the workers
    # (multiprocessing "spawn"), so they inherit it and read it when they import prometheus_client, before any metric
    # exists. Fresh per run, so no figure of an earlier run is added in; removed when the server stops. Granian's
    # workers (multiprocessing "fork") inherit it the same way.
    with tempfile.TemporaryDirectory(prefix="keel-metrics-") as directory:
        os.environ[metrics.MULTIPROCESS_DIR] = directory
        try:
            run(settings)
        finally:
            del os.environ[metrics.MULTIPROCESS_DIR]


def _stopped(sig: int, frame: FrameType | None) -> NoReturn:
    sys.exit(0)


def _run_uvicorn(settings: Settings) -> None:
    # uvicorn raises the SIGTERM it handled again once it has stopped, so that the handler it found runs: this one,
    # which makes a graceful stop exit 0, not "killed by SIGTERM" (143), which supervisors would report as a crash
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run(
        "keel.asgi:app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop=UVICORN_LOOP,
        # httptools, with the request-head size and time limits of SPEC §2 and problem+json refusals
        http=UVICORN_HTTP,
        # wsproto: the smallest per-socket memory measured here (SPIKES.md), lighter still in keel's subclass;
        # deflate off, it costs 7x memory per socket and doubles fan-out time
        ws=UVICORN_WS,
        ws_per_message_deflate=False,
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        # keel's trusted-proxy rule is the only one that may rewrite the client address (SPEC §5)
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )


def _run_granian(settings: Settings) -> None:
    # Granian's supervisor handles SIGTERM itself and returns once every worker has drained: the exit is 0 as above
    granian.run(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        stop_timeout=int(DRAIN_TIMEOUT) + GRACEFUL_SHUTDOWN,
    )


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (idempotent)."""
    settings = settings_or_exit()

    async def run() -> str:
        engine = db.create_engine(settings.database_url, pool_size=1)
        try:
            await db.upgrade(engine)
            database, _ = await db.schema_revisions(engine)
        finally:
            await engine.dispose()
        return ", ".join(sorted(database))

    try:
        revision = asyncio.run(run())
    except Exception as exc:  # one line for the operator; the traceback adds nothing they can act on
        fail(f"migration failed ({type(exc).__name__}: {exc})")
    click.echo(f"keel: database schema at {revision}", err=True)


@main.command("create-admin")
@click.option("--username", required=True, help="The admin's username (an existing user is promoted).")
@click.option("--email", required=True, help="The admin's email.")
def create_admin(username: str, email: str) -> None:
    """Create an admin, or promote an existing user; the password comes from KEEL_ADMIN_PASSWORD or a prompt."""
    settings = settings_or_exit()
    password = os.environ.get("KEEL_ADMIN_PASSWORD") or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    try:
        data = msgspec.convert({"username": username, "email": email, "password": password}, UserCreate)
    except msgspec.ValidationError as exc:
        fail(f"invalid admin: {exc}", code=2)

    async def run() -> tuple[User, bool]:
        engine = db.create_engine(settings.database_url, pool_size=1)
        hasher = PasswordHasher(workers=1)
        # with Redis, a promotion invalidates every instance's cached `GET /users/me` at once; the in-process
        # cache lives in the server's memory, out of this process' reach: there it is current within its TTL
        backends = await open_backends(settings.redis_url)
        try:
            if problem := await _schema_problem(engine):
                fail(problem)
            async with db.create_sessionmaker(engine)() as session:
                return await accounts.create_admin(
                    session, hasher, backends.cache, username=data.username, email=data.email, password=data.password
                )
        finally:
            hasher.close()
            await backends.close()
            await engine.dispose()

    try:
        user, created = asyncio.run(run())
    except KeelError as exc:
        fail(exc.detail)
    click.echo(f"keel: {'created' if created else 'promoted'} admin {user.username} ({user.id})", err=True)


@main.group()
def keys() -> None:
    """Signing keys for EdDSA mode."""


@keys.command("generate")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/keys"),
    show_default=True,
    help="Where to write <kid>.key (private) and <kid>.pem (public).",
)
def generate_keys(directory: Path) -> None:
    """Write a new Ed25519 key pair and print the settings that use it."""
    private, public = generate_ed25519_keypair(directory)
    click.echo(f"KEEL_JWT_PRIVATE_KEY_FILE={private}")
    click.echo(f"KEEL_JWT_PUBLIC_KEYS_DIR={public.parent}")


def write_json(document: object, output: Path | None) -> None:
    text = msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"
    if output is None:
        sys.stdout.buffer.write(text)
    else:
        output.write_bytes(text)


OUTPUT = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")


@main.command()
@OUTPUT
def openapi(output: Path | None) -> None:
    """Print the OpenAPI 3.1 document."""
    write_json(openapi_document(create_app(settings_or_exit())), output)


@main.command()
@OUTPUT
def asyncapi(output: Path | None) -> None:
    """Print the AsyncAPI 3 document of /ws and /events."""
    write_json(realtime_asyncapi.build(VERSION), output)
