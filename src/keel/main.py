"""create_app(settings): the composition root — lifespan, middleware, routers, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version
from typing import Final

from litestar import Litestar, Router
from litestar.handlers import HTTPRouteHandler
from litestar.types import ControllerRouterHandler, Method

from keel import db
from keel.accounts.router import PublicController
from keel.health.router import HealthController
from keel.http.compression import CompressionMiddleware
from keel.http.deps import DEPENDENCIES
from keel.http.docs import docs_router, openapi_config
from keel.http.errors import EXCEPTION_HANDLERS
from keel.http.middleware import EdgeMiddleware
from keel.http.requests import require_declared_media_type
from keel.settings import Settings
from keel.shared import open_backends

API_VERSIONS: Final = ("v1", "v2")
VERSION: Final = package_version("keel")


def api_router(version: str) -> Router:
    """One API version: the same domain controllers under /api/<version>; versions differ only in list shapes."""
    handlers: Sequence[ControllerRouterHandler] = [PublicController]
    return Router(path=f"/api/{version}", route_handlers=list(handlers), tags=[version])


def operation_id(handler: HTTPRouteHandler, method: Method, path: list[object]) -> str:
    """`<version>-<tag>-<function>`, unique although every version mounts the same handlers."""
    version = next((str(part) for part in path if str(part) in API_VERSIONS), "")
    tag = next((t for t in handler.resolve_tags() if t not in API_VERSIONS), "")
    return "-".join(part for part in (version, tag, handler.handler_name) if part)


def create_app(settings: Settings, *, extra_handlers: Sequence[ControllerRouterHandler] = ()) -> Litestar:
    """The keel application for `settings`; `extra_handlers` lets tests mount routes of their own."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        backends = await open_backends(settings.redis_url)
        app.state.engine = engine
        app.state.sessionmaker = db.create_sessionmaker(engine)
        app.state.backends = backends
        try:
            yield
        finally:
            await backends.close()
            await engine.dispose()

    config = openapi_config(VERSION)
    config.operation_id_creator = operation_id  # type: ignore[assignment]
    app = Litestar(
        route_handlers=[HealthController, docs_router(), *(api_router(v) for v in API_VERSIONS), *extra_handlers],
        lifespan=[lifespan],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        before_request=require_declared_media_type,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=config,
        logging_config=None,
        debug=False,
    )
    # Outside Litestar's router, so unknown routes and 405s get the same headers; these layers are pure ASGI.
    app.asgi_handler = EdgeMiddleware(CompressionMiddleware(app.asgi_handler), cors_origins=settings.cors_origins)
    return app
