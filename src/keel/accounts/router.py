"""Accounts endpoints (SPEC §4); versioned routers mount this controller under /api/v1 and /api/v2."""

from __future__ import annotations

import msgspec
from litestar import Controller, get


class PublicMessage(msgspec.Struct):
    message: str


class PublicController(Controller):
    path = "/public"
    tags = ["public"]

    @get(sync_to_thread=False)
    def public(self) -> PublicMessage:
        """A greeting anyone may read: no auth."""
        return PublicMessage(message="Hello from keel. This endpoint needs no token.")
