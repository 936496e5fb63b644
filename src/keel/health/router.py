"""Liveness and readiness (SPEC §3): never rate limited, no auth."""

from __future__ import annotations

import asyncio
from typing import Any, Final, Literal

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keel import metrics
from keel.http.deps import DbEngine, SharedBackends
from keel.http.errors import PROBLEM_JSON, ProblemDetails, problem, problem_document
from keel.http.openapi import ANSWERS_OUTAGES
from keel.shared import Health as Check

CHECK_TIMEOUT = 2.0


class Liveness(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    status: Literal["ready"]
    checks: dict[str, Check]


class NotReady(ProblemDetails):
    """A 503 from /readyz: the problem, and which dependency failed its check (documentation only)."""

    checks: dict[str, Check]


NOT_READY: Final = "ops.not_ready"
NOT_READY_EXAMPLE: Final = problem_document(
    503, code=NOT_READY, detail="A dependency is not answering.", checks={"database": "ok", "redis": "error"}
)


async def database_check(engine: AsyncEngine) -> Check:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure to answer means not ready; the cause is in the database log
        return "error"
    return "ok"


class HealthController(Controller):
    path = "/"
    tags = ["ops"]

    @get("/healthz", summary="Check liveness", sync_to_thread=False)
    def healthz(self) -> Liveness:
        """Liveness: 200 while the process can serve."""
        return Liveness()

    @get(
        "/readyz",
        summary="Check readiness",
        opt={ANSWERS_OUTAGES: True},  # a check that fails is its answer, not an error
        responses={
            200: ResponseSpec(Readiness, description="The database and Redis (if configured) answer"),
            503: ResponseSpec(
                data_container=NotReady,
                description="The database or Redis is not answering (`checks` says which), or the server is stopping",
                media_type=PROBLEM_JSON,
                generate_examples=False,
                examples=[Example(summary="Redis down", value=NOT_READY_EXAMPLE)],
            ),
        },
    )
    async def readyz(self, db_engine: DbEngine, backends: SharedBackends, state: State) -> Response[Any]:
        """Readiness: 200 when the database and Redis (if configured) answer, else 503 problem+json; 503 too
        from the moment the server is asked to stop (keel.http.shutdown)."""
        database, redis = await asyncio.gather(database_check(db_engine), backends.ping())
        checks: dict[str, Check] = {"database": database, "redis": redis}
        stopping = state["lifecycle"].stopping
        if stopping or "error" in checks.values():
            return problem(
                503,
                code=NOT_READY,
                detail="The server is shutting down." if stopping else "A dependency is not answering.",
                checks=checks,
                headers={"Retry-After": "5"},
            )
        return Response(Readiness(status="ready", checks=checks))

    @get("/metrics", sync_to_thread=False, include_in_schema=False)
    def metrics(self) -> Response[bytes]:
        """Prometheus metrics (text exposition format): this process's, or every worker's added up (keel.metrics)."""
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
