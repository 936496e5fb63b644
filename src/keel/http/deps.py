"""Providers for what handlers need: the engine and the shared backends, opened by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.plugins import ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute, WebSocketRoute
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from keel.http.caching import Reads
from keel.shared import Backends

if TYPE_CHECKING:
    from litestar._kwargs import KwargsModel


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """A session per request that is only closed here: use cases commit their own work (STYLE.md)."""
    async with state["sessionmaker"]() as session:
        yield session


def provide_reads(request: Request[Any, Any, Any]) -> Reads:
    """Conditional reads (ETag, 304, the read cache) for this request."""
    state = request.app.state
    return Reads(state["backends"].cache, request.headers.get("if-none-match"), state["sessionmaker"], state["loads"])


def from_state(name: str) -> Provide:
    """A provider of the lifespan's `app.state.<name>` (the engine, the backends, the hasher ...)."""

    def provide(state: State) -> Any:
        return state[name]

    return Provide(provide, sync_to_thread=False)


# what handlers annotate their parameters with; the parameter names are the keys of DEPENDENCIES
DbEngine = NamedDependency[AsyncEngine]
DbSession = NamedDependency[AsyncSession]
SharedBackends = NamedDependency[Backends]
ConditionalReads = NamedDependency[Reads]

DEPENDENCIES: Final = {
    "db_engine": from_state("engine"),
    "db_session": Provide(provide_db_session),
    "backends": from_state("backends"),
    "reads": Provide(provide_reads, sync_to_thread=False),
}


class SequentialDependencies(ReceiveRoutePlugin):
    """Each route's dependencies resolved one after another, in the request's own task.

    Litestar resolves a handler's independent dependencies concurrently, in an anyio task group per request
    (litestar-org/litestar#4563): two dependencies cost ~90 µs more than one (bench/dependencies.py), and a
    generator dependency (the database session) is then started in a child task and closed in the request's.
    keel's providers are state lookups and a pool checkout, nothing worth overlapping, so every batch of several
    is split into batches of one in a fixed order, which Litestar awaits directly. A dependency's own dependencies
    are in earlier batches, so the order stays valid.

    This reshapes Litestar's private `KwargsModel.dependency_batches`: pyproject bounds litestar below 2.26, and
    tests/http/test_deps.py fails if the attribute moves or a handler's dependencies leave its task again.
    """

    __slots__ = ()

    def receive_route(self, route: BaseRoute) -> None:
        models: list[KwargsModel | None] = []
        if isinstance(route, HTTPRoute):
            models = [model for _, model in route.route_handler_map.values()]
        elif isinstance(route, WebSocketRoute):
            models = [route.handler_parameter_model]
        for model in models:
            if model is not None:
                model.dependency_batches = [
                    {dependency}
                    for batch in model.dependency_batches
                    for dependency in sorted(batch, key=lambda dependency: dependency.key)
                ]
