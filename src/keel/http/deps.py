"""Providers for what handlers need: the engine and the shared backends, opened by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from keel.shared import Backends


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """A session per request that is only closed here: use cases commit their own work (STYLE.md)."""
    async with state.sessionmaker() as session:
        yield session


def provide_engine(state: State) -> AsyncEngine:
    engine: AsyncEngine = state.engine
    return engine


def provide_backends(state: State) -> Backends:
    backends: Backends = state.backends
    return backends


# what handlers annotate their parameters with; the parameter names are the keys of DEPENDENCIES
DbEngine = NamedDependency[AsyncEngine]
DbSession = NamedDependency[AsyncSession]
SharedBackends = NamedDependency[Backends]

DEPENDENCIES: Final = {
    "db_engine": Provide(provide_engine, sync_to_thread=False),
    "db_session": Provide(provide_db_session),
    "backends": Provide(provide_backends, sync_to_thread=False),
}
