"""Providers for what handlers need: the engine and the shared backends, opened by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from keel.http.caching import Reads
from keel.shared import Backends


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """A session per request that is only closed here: use cases commit their own work (STYLE.md)."""
    async with state.sessionmaker() as session:
        yield session


def provide_reads(request: Request[Any, Any, Any]) -> Reads:
    """Conditional reads (ETag, 304, the read cache) for this request."""
    state = request.app.state
    return Reads(state.backends.cache, request.headers.get("if-none-match"), state.sessionmaker, state.loads)


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
