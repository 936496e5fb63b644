"""v2 lists: a page of items and an opaque cursor (SPEC §6). Routers encode positions; services take them plain."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import Parameter

from keel.errors import Invalid
from keel.types import MAX_INT64

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


# the query parameters of lists: every list takes `limit` (SPEC §6); v1 pages by offset, v2 by cursor
Limit = Annotated[int, Parameter(ge=1, le=100, description="1 to 100")]
Offset = Annotated[int, Parameter(ge=0, le=MAX_INT64)]
Cursor = Annotated[str | None, Parameter(max_length=200, description="next_cursor of the previous page")]


class Page(msgspec.Struct, Generic[T]):
    """A v2 list: a page of items and the opaque cursor of the next page (null at the end)."""

    data: list[T]
    next_cursor: str | None


class InvalidCursor(Invalid):
    code = "pagination.invalid_cursor"
    title = "Invalid cursor"


def encode_cursor(position: Any) -> str:
    """An opaque cursor for a position (a name, a seq, a (time, id) pair); clients must not parse it."""
    return base64.urlsafe_b64encode(_encoder.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str, position: Any) -> Any:
    """The position in a cursor this API issued, or InvalidCursor (422). `position` is a type, constraints (`Meta`)
    included: a cursor is client input like any other, so its position is checked as strictly."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=position)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("The cursor is not one this API issued.", loc=("query", "cursor")) from None
