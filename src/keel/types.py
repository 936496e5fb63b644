"""Constrained types every domain's wire models share (SPEC §2: hostile input is refused, never stored)."""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta

#: The largest integer both databases store (SQLite INTEGER, PostgreSQL BIGINT). A number past it in a query
#: parameter, a cursor or a frame is refused with 422 rather than overflowing a driver into a 500.
MAX_INT64: Final = 2**63 - 1

#: No NUL character anywhere: PostgreSQL cannot store one in text, and a name that differs by one is a look-alike.
#: A pattern, so OpenAPI shows the rule too; msgspec searches it, which costs one scan of the string.
NO_NUL: Final = r"^[^\x00]*$"
NO_NUL_MESSAGE: Final = "must not contain NUL (\\u0000) characters"

#: A sequence number or an offset: 0 to MAX_INT64.
Position = Annotated[int, Meta(ge=0, le=MAX_INT64)]
