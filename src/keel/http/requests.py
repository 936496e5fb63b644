"""Request-body rules shared by every endpoint (SPEC §2): the declared media type or 415, and JSON that cannot
hurt the server."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Final

from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, InternalServerException, SerializationException
from litestar.handlers import HTTPRouteHandler

_JSON: Final = RequestEncodingType.JSON.value
# a handler that reads the body itself (the token endpoint takes a form or JSON) declares it with opt
ACCEPTS: Final = "accepts"
# a handler limited by an extra policy besides the default one names it with opt (SPEC §5: "auth")
RATE_LIMIT: Final = "rate_limit"
# scope-state key: the JSON body as decoded, before its conversion to the handler's type
DECODED_BODY: Final = "keel.decoded_body"


def _accepted_media_types(handler: HTTPRouteHandler) -> tuple[str, ...]:
    if ACCEPTS in handler.opt:
        return tuple(handler.opt[ACCEPTS])
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return ()
    media_type = getattr(data.kwarg_definition, "media_type", _JSON)
    return (str(getattr(media_type, "value", media_type)),)


async def require_declared_media_type(request: Request[Any, Any, Any]) -> None:
    """415 when a body arrives as anything other than what the handler reads (before the body is read)."""
    accepted = _accepted_media_types(request.route_handler)
    if not accepted or not _has_body(request):
        return
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type in accepted or (_JSON in accepted and content_type.endswith("+json")):
        return
    raise HTTPException(status_code=415, detail=f"Send the body as {' or '.join(accepted)}.")


def _has_body(request: Request[Any, Any, Any]) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class ClientDisconnected(Exception):
    """The client went away before its request body arrived in full: nobody is left to answer, and it is no error
    of the server's."""


class KeelRequest(Request[Any, Any, Any]):
    """Litestar's request, whose JSON body fails as a client error whatever the client sent.

    Litestar decodes a body with msgspec and turns only msgspec's DecodeError into a client error. Two other
    exceptions escape it as 500s: RecursionError, for JSON nested deeper than the interpreter's recursion limit
    (a 2 KB body of 1 000 `[` is enough), and UnicodeDecodeError, for a string that is not UTF-8. Both are the
    client's; the body is then answered as unparseable (422). Shallower nesting needs nothing more: no keel body
    has a member that nests, so anything nested past 64 levels fails its schema with a 422 anyway.
    """

    async def json(self) -> Any:
        try:
            value = await super().json()
        except RecursionError:
            raise SerializationException("nested too deeply") from None
        except UnicodeDecodeError:
            raise SerializationException("not UTF-8") from None
        self.scope["state"][DECODED_BODY] = value  # for a 422 that lists every bad field (keel.http.validation)
        return value

    async def stream(self) -> AsyncGenerator[bytes, None]:
        # Litestar raises InternalServerException (a 500, logged with its traceback) when the client disconnects
        # mid-body, and for nothing else while streaming; tests/http/test_hostile_input.py fails if that moves
        try:
            async for chunk in super().stream():
                yield chunk
        except InternalServerException as exc:
            raise ClientDisconnected(str(exc.detail)) from None
