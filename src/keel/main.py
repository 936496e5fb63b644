"""create_app(settings): the composition root — lifespan, middleware, routers, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final

import msgspec
from litestar import Litestar, Router
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import ControllerRouterHandler, Method

from keel import db, metrics, telemetry
from keel.accounts import service as accounts
from keel.accounts.deps import DEPENDENCIES as ACCOUNTS_DEPENDENCIES
from keel.accounts.deps import PasswordAdmission
from keel.accounts.passwords import PasswordHasher
from keel.accounts.router import CONTROLLERS as ACCOUNTS
from keel.accounts.router import LISTS as USER_LISTS
from keel.accounts.router import jwks
from keel.accounts.service import Sessions
from keel.health.router import HealthController
from keel.http.auth import AuthMiddleware, RequireCaller
from keel.http.caching import Loads
from keel.http.compression import CompressionMiddleware
from keel.http.deps import DEPENDENCIES, SequentialDependencies
from keel.http.docs import docs_router, openapi_config
from keel.http.errors import EXCEPTION_HANDLERS
from keel.http.examples import examples_router
from keel.http.idempotency import DEPENDENCIES as IDEMPOTENCY_DEPENDENCIES
from keel.http.idempotency import IdempotencyEdge
from keel.http.middleware import EdgeMiddleware
from keel.http.openapi import Edge, complete
from keel.http.requests import KeelRequest, require_declared_media_type
from keel.http.sessions import SessionCookies
from keel.http.shutdown import Lifecycle, stop_on_signal
from keel.idempotency.service import Idempotency
from keel.identity.denylist import Denylist
from keel.identity.keys import load_keyring
from keel.identity.verifier import TokenVerifier
from keel.logs import AccessLog
from keel.mail.outbox import Postbox, Sender
from keel.mail.transport import transport_for
from keel.ratelimit.clients import ClientResolver
from keel.ratelimit.deps import (
    API_PREFIX,
    AUTH_POLICY,
    DEFAULT_POLICY,
    NamedPolicy,
    RateLimitMiddleware,
    RateLimits,
)
from keel.ratelimit.limiter import Limiter
from keel.realtime import asyncapi
from keel.realtime.access import Realtime, StreamCounts
from keel.realtime.committer import Committer
from keel.realtime.hub import Hub
from keel.realtime.router import COMMON as CHANNELS
from keel.realtime.router import LISTS as CHANNEL_LISTS
from keel.realtime.routes import EVENTS_OPENAPI, RealtimeRoutes
from keel.settings import Settings
from keel.shared import open_backends

API_VERSIONS: Final = ("v1", "v2")
VERSION: Final = package_version("keel")
VAR_DIR: Final = Path("var")  # relative to the working directory (SPEC §1)


def api_router(version: str) -> Router:
    """One API version: the same domain controllers under /api/<version>; versions differ only in list shapes."""
    handlers: list[ControllerRouterHandler] = [*ACCOUNTS, *USER_LISTS[version], *CHANNELS, *CHANNEL_LISTS[version]]
    return Router(path=f"/api/{version}", route_handlers=handlers)


def operation_id(handler: HTTPRouteHandler, method: Method, path: list[object]) -> str:
    """`<tag>_<function>` (`users_register`): method names a generated client can use as they are.

    Every version mounts the same handlers, so ids must still differ: the current version (the last of
    API_VERSIONS) gets the plain name, an older one is prefixed with its version (`v1_users_register`).
    """
    version = next((str(part) for part in path if str(part) in API_VERSIONS[:-1]), "")
    tag = next(iter(handler.resolve_tags()), "")
    return "_".join(part for part in (version, tag, handler.handler_name) if part)


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document /api-docs/openapi.json serves and `keel openapi` writes: Litestar's, completed with the
    statuses and headers of the edge and the endpoints served in front of the framework."""
    edge = Edge(limited_prefix=API_PREFIX, extra_paths={"/events": EVENTS_OPENAPI})
    return complete(app.openapi_schema.to_schema(), app.routes, edge)


def keyring_options(settings: Settings) -> dict[str, Any]:
    """load_keyring's arguments from the settings."""
    return {
        "secret": settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        "private_key_file": settings.jwt_private_key_file,
        "public_keys_dir": settings.jwt_public_keys_dir,
        "var_dir": VAR_DIR,
        "issuer": settings.jwt_issuer,
        "audience": settings.jwt_audience,
    }


def create_app(settings: Settings, *, extra_handlers: Sequence[ControllerRouterHandler] = ()) -> Litestar:
    """The keel application for `settings`; `extra_handlers` lets tests mount routes of their own."""
    clients = ClientResolver(settings.trusted_proxies, settings.proxy_header)
    access_log = AccessLog.configured(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url, statement_timeout=db.REQUEST_STATEMENT_TIMEOUT)
        telemetry.setup(settings, engine)  # first: Redis and SQL spans from the start
        sessionmaker = db.create_sessionmaker(engine)
        backends = await open_backends(settings.redis_url)
        keyring = load_keyring(**keyring_options(settings))
        denylist = Denylist(backends.broker, sessionmaker)
        hasher = PasswordHasher()
        # fingerprints are keyed by a secret every instance shares: a sign-up's body holds a password
        idempotency = Idempotency(keyring.derive_key("idempotency fingerprint"))
        rate_limits = RateLimits(
            limiter=Limiter(backends.scripts, batch=backends.redis is not None, lease=backends.redis is not None),
            clients=clients,
            default=NamedPolicy.of(DEFAULT_POLICY, settings.rate_limit) if settings.rate_limit else None,
            # exact: the login and sign-up flood bounds are stated to the request, so no leases for them
            auth=NamedPolicy.of(AUTH_POLICY, settings.auth_rate_limit, exact=True)
            if settings.auth_rate_limit
            else None,
        )
        verifier = TokenVerifier(keyring, denylist)
        sessions = Sessions(
            keyring, denylist, settings.access_token_ttl, settings.refresh_token_ttl, settings.refresh_grace
        )

        async def renew_session(refresh_token: str) -> tuple[str, str]:
            async with sessionmaker() as session:
                pair = await accounts.refresh(session, sessions, refresh_token=refresh_token)
            return pair.access_token, pair.refresh_token

        session_cookies = SessionCookies(
            verifier,
            renew_session,
            max_age=int(settings.refresh_token_ttl.total_seconds()),
            secure=settings.env != "development",
            cors_origins=settings.cors_origins,
        )
        hub = Hub(backends.broker, sessionmaker)
        committer = Committer(sessionmaker, backends.broker, backends.cache)
        if backends.redis is not None:  # one process needs no watch: a broker in it cannot lose what it was given
            hub.watch()
        smtp_url = settings.smtp_url.get_secret_value() if settings.smtp_url else None
        # its pace (keel.mail.outbox.Timing) is the default here; the outbox's own tests shorten it
        sender = Sender(sessionmaker, transport_for(smtp_url, VAR_DIR), mail_from=settings.mail_from)
        denylist.on_revoked(hub.on_revoked)
        lifecycle = Lifecycle()
        app.state.update(
            lifecycle=lifecycle,
            engine=engine,
            rate_limits=rate_limits,
            sessionmaker=sessionmaker,
            backends=backends,
            loads=Loads(),
            keyring=keyring,
            hasher=hasher,
            verifier=verifier,
            sessions=sessions,
            session_cookies=session_cookies,
            postbox=Postbox(settings.public_url, settings.mail_from, sender.wake),
            mail_budget=rate_limits.admit_address,
            realtime=Realtime(
                hub,
                verifier,
                backends.kv,
                backends.cache,
                rate_limits,
                settings.ws_send_queue,
                StreamCounts(settings.max_streams_per_user),
                session_cookies,
                idempotency,
                committer,
            ),
            idempotency=IdempotencyEdge(idempotency, clients.client_ip),
        )
        await denylist.start()
        sender.start()  # every instance sends what is due, whoever queued it
        restore_signals = stop_on_signal(lifecycle, hub.drain, delay=settings.shutdown_delay.total_seconds())
        try:
            yield
        finally:
            restore_signals()
            await sender.stop()
            await committer.close()  # queued publishes commit and go out before the hub and engine close
            await hub.close()
            await denylist.stop()
            hasher.close()
            await backends.close()
            await engine.dispose()
            if access_log is not None:
                access_log.flush()
            metrics.forget_this_worker()
            telemetry.shutdown()  # last: flushes the spans of everything above

    config = openapi_config(VERSION, openapi_document)
    config.operation_id_creator = operation_id  # type: ignore[assignment]
    app = Litestar(
        route_handlers=[
            HealthController,
            jwks,
            docs_router(msgspec.json.encode(asyncapi.build(VERSION))),
            *(api_router(v) for v in API_VERSIONS),
            # the example chat page: development only, so a production deployment exposes nothing it did not ask for
            *([examples_router()] if settings.env == "development" else []),
            *extra_handlers,
        ],
        lifespan=[lifespan],
        dependencies={**DEPENDENCIES, **ACCOUNTS_DEPENDENCIES, **IDEMPOTENCY_DEPENDENCIES},
        plugins=[SequentialDependencies()],
        # auth verifies first so the limiter can key by user; refusals come after the limiter, so they count too
        middleware=[AuthMiddleware, RateLimitMiddleware, RequireCaller, PasswordAdmission],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        before_request=require_declared_media_type,
        request_class=KeelRequest,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=config,
        logging_config=None,
        debug=False,
    )
    # Outside Litestar's router, so unknown routes and 405s get the same headers; these layers are pure ASGI.
    # Compression inside the realtime routes: it never compresses an event stream or a WebSocket, and each idle
    # stream would hold its frame and the 8 cells its closure's variables get on entry (0.6 KiB, bench/sse_memory.py)
    # and, with Accept-Encoding, the closure itself, for nothing.
    app.asgi_handler = EdgeMiddleware(
        RealtimeRoutes(CompressionMiddleware(app.asgi_handler), app.state),
        cors_origins=settings.cors_origins,
        access_log=access_log,
        client_ip=clients.client_ip,
        methods={route.path_format: route.methods for route in app.routes if isinstance(route, HTTPRoute)},
    )
    return app
