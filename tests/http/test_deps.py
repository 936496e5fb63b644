"""SequentialDependencies: a handler's dependencies are resolved in the request's own task, one after another."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar import Litestar, get, websocket
from litestar.connection import WebSocket
from litestar.di import NamedDependency, Provide
from litestar.routes import HTTPRoute, WebSocketRoute
from litestar.testing import AsyncTestClient, TestClient

from keel.http.deps import SequentialDependencies


def tasks_app(*, sequential: bool) -> Litestar:
    """Two independent dependencies and one that needs both, each naming the task it ran in."""

    async def first() -> Any:
        return asyncio.current_task()

    async def second() -> Any:
        return asyncio.current_task()

    async def both(first: NamedDependency[Any], second: NamedDependency[Any]) -> list[Any]:
        return [first, second, asyncio.current_task()]

    @get("/tasks")
    async def tasks(both: NamedDependency[list[Any]]) -> list[bool]:
        return [task is asyncio.current_task() for task in both]

    @websocket("/ws")
    async def socket(socket: WebSocket[Any, Any, Any], both: NamedDependency[list[Any]]) -> None:
        await socket.accept()
        await socket.send_json([task is asyncio.current_task() for task in both])
        await socket.close()

    return Litestar(
        [tasks, socket],
        dependencies={"first": Provide(first), "second": Provide(second), "both": Provide(both)},
        plugins=[SequentialDependencies()] if sequential else [],
    )


@pytest.mark.parametrize("sequential", [True, False])
async def test_dependencies_run_in_the_requests_task_only_with_the_plugin(sequential: bool) -> None:
    async with AsyncTestClient(app=tasks_app(sequential=sequential)) as client:
        response = await client.get("/tasks")
    assert response.status_code == 200, response.text
    # Litestar's own way, the control: the two independent ones run in a task group's tasks
    assert response.json() == [True, True, True] if sequential else [False, False, True]


def test_a_websockets_dependencies_run_in_its_task() -> None:
    with TestClient(app=tasks_app(sequential=True)) as client, client.websocket_connect("/ws") as socket:
        assert socket.receive_json() == [True, True, True]


def test_every_route_of_keel_resolves_one_dependency_at_a_time(app: Litestar) -> None:
    batches = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method, (_, model) in route.route_handler_map.items():
                batches[f"{method} {route.path}"] = model.dependency_batches
        elif isinstance(route, WebSocketRoute) and route.handler_parameter_model is not None:
            batches[f"WS {route.path}"] = route.handler_parameter_model.dependency_batches
    assert all(len(batch) == 1 for each in batches.values() for batch in each)
    # one that Litestar would resolve three at a time: the session, the hasher and the session store
    token = [next(iter(batch)).key for batch in batches["POST /api/v1/auth/token"]]
    assert sorted(token) == ["db_session", "hasher", "sessions"]
