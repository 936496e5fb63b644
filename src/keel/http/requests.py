"""Request-body rules shared by every endpoint (SPEC §2): the declared media type or 415."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler

_JSON: Final = RequestEncodingType.JSON.value
# a handler that reads the body itself (the token endpoint takes a form or JSON) declares it with opt
ACCEPTS: Final = "accepts"
# a handler limited by an extra policy besides the default one names it with opt (SPEC §5: "auth")
RATE_LIMIT: Final = "rate_limit"


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
