"""HTTP conventions don't depend on storage: these tests run on the embedded backend only, with test routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from litestar import Litestar, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent, Stream
from msgspec import Meta

from keel.errors import Conflict, Forbidden, Invalid, KeelError, NotFound, RateLimited, Unauthorized, Unavailable
from keel.main import create_app
from keel.settings import Settings
from tests.conftest import Backend, make_settings, migrate

MAX_BODY = 4096


class Widget(msgspec.Struct):
    name: Annotated[str, Meta(min_length=1, max_length=8)]
    size: int = 1


@post("/test/widgets", sync_to_thread=False)
def create_widget(data: JSONBody[Widget]) -> Widget:
    return data


@get("/test/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("SELECT password_hash FROM users WHERE id = 1")


@get("/test/big", sync_to_thread=False)
def big() -> dict[str, str]:
    return {"text": "keel " * 1000}


@get("/test/events")
async def events() -> ServerSentEvent:
    async def stream() -> AsyncIterator[str]:
        for _ in range(3):
            yield "x" * 2000
            await asyncio.sleep(0)

    return ServerSentEvent(stream())


@get("/test/stream")
async def stream() -> Stream:
    async def lines() -> AsyncIterator[bytes]:
        for i in range(500):
            yield b"line %d\n" % i

    return Stream(lines(), media_type="application/x-ndjson")


@get("/test/raise/{kind:str}", sync_to_thread=False)
def raise_domain_error(kind: FromPath[str]) -> None:
    errors: dict[str, KeelError] = {
        "conflict": Conflict("That name is taken.", code="widgets.name_taken"),
        "limited": RateLimited(retry_after=7),
        "unauthorized": Unauthorized(),
        "forbidden": Forbidden("Admins only.", code="widgets.admin_only"),
        "unavailable": Unavailable(retry_after=3),
        "invalid": Invalid("Bad widget.", code="widgets.bad"),
        "not_found": NotFound("No such widget.", code="widgets.not_found"),
    }
    raise errors[kind]


TEST_ROUTES = [raise_domain_error, create_widget, boom, big, events, stream]


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    url = f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"
    asyncio.run(migrate(url))
    return Backend("embedded", url, None)


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return make_settings(backend, KEEL_MAX_BODY_BYTES=MAX_BODY, KEEL_CORS_ORIGINS="https://app.example")


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings, extra_handlers=TEST_ROUTES)
