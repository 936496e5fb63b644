"""Every error becomes RFC 9457 problem+json here; the only table of status codes (SPEC §2)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Send

from keel.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    KeelError,
    NotFound,
    RateLimited,
    RetryLater,
    Unauthorized,
    Unavailable,
)
from keel.http.requests import DECODED_BODY, ClientDisconnected
from keel.http.validation import sentence, split_path, struct_errors
from keel.shared.errors import OUTAGES

log = logging.getLogger("keel.http")
_encoder = msgspec.json.Encoder()


class ProblemDetails(msgspec.Struct):
    """RFC 9457 problem details, as every error response carries them (documentation only)."""

    type: str
    title: str
    status: int
    detail: str
    code: str


def problem_response(description: str) -> ResponseSpec:
    """An OpenAPI response entry for a problem+json answer."""
    return ResponseSpec(
        data_container=ProblemDetails, description=description, media_type=PROBLEM_JSON, generate_examples=False
    )


PROBLEM_JSON: Final = "application/problem+json"
STATUS_BY_KIND: Final[dict[type[KeelError], int]] = {
    BadRequest: 400,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    Forbidden: 403,
    Invalid: 422,
    RateLimited: 429,
    Unavailable: 503,
}
# codes for the statuses the framework raises by itself (unknown route, wrong method, body too large ...)
CODE_BY_STATUS: Final = {
    400: "http.bad_request",
    401: "http.unauthorized",
    403: "http.forbidden",
    404: "http.not_found",
    405: "http.method_not_allowed",
    413: "http.payload_too_large",
    415: "http.unsupported_media_type",
    422: "http.validation_error",
    429: "http.rate_limited",
    500: "http.internal_error",
    503: "http.unavailable",
}


def problem_document(
    status: int, *, code: str | None = None, detail: str | None = None, title: str | None = None, **extensions: Any
) -> dict[str, Any]:
    """The RFC 9457 members of a problem: `type`, `title`, `status`, `detail`, `code` and any extensions."""
    phrase = HTTPStatus(status).phrase
    code = code or CODE_BY_STATUS.get(status, f"http.{status}")
    return {
        "type": f"urn:keel:problem:{code}",
        "title": title or phrase,
        "status": status,
        "detail": detail or phrase,
        "code": code,
        **extensions,
    }


def problem_body(status: int, *, code: str, detail: str, title: str | None = None, **extensions: Any) -> bytes:
    """A problem document as bytes, for pure-ASGI layers that answer without the framework."""
    return _encoder.encode(problem_document(status, code=code, detail=detail, title=title, **extensions))


def problem_headers(headers: Iterable[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` plus the content type and length of a problem document `body`, for pure-ASGI layers."""
    return [*headers, (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]


async def send_problem(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a problem document from a pure-ASGI layer."""
    start = HTTPResponseStartEvent(type="http.response.start", status=status, headers=problem_headers(headers, body))
    await send(start)
    await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))


def render_error(exc: KeelError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """`exc` as keel_error renders it (status, headers, problem body), for layers that answer without Litestar."""
    status = status_of(exc)
    headers = [(name.lower().encode(), value.encode()) for name, value in error_headers(exc).items()]
    return status, headers, problem_body(status, code=exc.code, detail=exc.detail, title=exc.title, **error_fields(exc))


async def send_error(send: Send, exc: KeelError) -> None:
    """Answer `exc` from a pure-ASGI layer that refuses before any handler runs."""
    status, headers, body = render_error(exc)
    await send_problem(send, status, body, headers)


def problem(
    status: int,
    *,
    code: str | None = None,
    detail: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response[dict[str, Any]]:
    """A problem+json response; `extensions` become extra members (RFC 9457 §3.2)."""
    body = problem_document(status, code=code, detail=detail, title=title, **extensions)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_of(exc: KeelError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS_BY_KIND:
            return STATUS_BY_KIND[kind]
    return 500


def error_headers(exc: KeelError) -> dict[str, str]:
    """What the client needs besides the body: when to retry, how to authenticate."""
    headers: dict[str, str] = {}
    if isinstance(exc, RetryLater):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = exc.www_authenticate
    return headers


def error_fields(exc: KeelError) -> dict[str, Any]:
    """The `errors` member every 422 carries (SPEC §2), for a domain error that is one."""
    if isinstance(exc, Invalid):
        return {"errors": [{"loc": list(exc.loc), "msg": exc.detail}]}
    return {}


def keel_error(_: Request[Any, Any, Any], exc: KeelError) -> Response[dict[str, Any]]:
    status, headers = status_of(exc), error_headers(exc)
    return problem(status, code=exc.code, title=exc.title, detail=exc.detail, headers=headers, **error_fields(exc))


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        return internal_error(request, exc)
    if isinstance(exc.__cause__, SerializationException):  # Litestar reports an undecodable body as a 400
        return unparseable_body(request, exc.__cause__)
    detail = exc.detail if exc.detail and exc.detail != HTTPStatus(status).phrase else None
    headers = exc.headers
    if status == 405 and headers:  # Litestar spells the name both ways
        allow = next((value for name, value in headers.items() if name.lower() == "allow"), "")
        others = {name: value for name, value in headers.items() if name.lower() != "allow"}
        headers = {**others, "Allow": allow_value(allow.split(", "))}
    return problem(status, detail=detail, headers=headers)


def allow_value(methods: Iterable[str]) -> str:
    """`Allow` (RFC 9110 §10.2.1) for a resource answering `methods`, and HEAD wherever GET works (the edge runs
    HEAD as a GET)."""
    listed = set(methods)
    return ", ".join(sorted(listed | {"HEAD"} if "GET" in listed else listed))


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    errors = [_location(item) for item in exc.extra] if isinstance(exc.extra, list) else []
    if any(error["loc"][:1] == ["body"] for error in errors):
        # Litestar names a body's first error only; the body's struct names them all
        every = _body_errors(request)
        if every:
            errors = [error for error in errors if error["loc"][:1] != ["body"]] + every
    return problem(422, detail="The request is not valid.", errors=errors)


def _body_errors(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    state = request.scope.get("state", {})
    if DECODED_BODY not in state:
        return []
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    struct = data.annotation if data is not None else None
    if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
        return []
    return struct_errors(struct, state[DECODED_BODY], ["body"])


def _location(item: Any) -> dict[str, Any]:
    # Litestar reports {"key", "message", "source"}: key is the body's top-level field ("data" for the body as a
    # whole) and deeper fields arrive as a "- at `$.a[0].b`" suffix of msgspec's message
    if not isinstance(item, dict):
        return {"loc": [], "msg": str(item)}
    if "loc" in item:  # already in keel's form (a handler that reads its body itself)
        return item
    message, path = split_path(str(item.get("message", "invalid")))
    source, key = item.get("source"), item.get("key")
    # the parameter kind is a str enum (ParamType.QUERY): its value is the word ("query")
    loc: list[str | int] = [str(getattr(source, "value", source))] if source else []
    if key and key != "data":
        loc.append(str(key))
    elif key == "data" and message in _NO_BODY:  # Litestar's words for a missing body: a KeyError's repr
        return {"loc": loc, "msg": "A JSON body is required."}
    loc.extend(path)
    return {"loc": loc, "msg": sentence(message)}


_NO_BODY: Final = frozenset({"'data'", "Object missing required field `data`"})


def unparseable_body(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return problem(422, detail="The body is not valid JSON.", errors=[{"loc": ["body"], "msg": body_error(exc)}])


def body_error(exc: BaseException) -> str:
    """What is wrong with a body that does not decode, in words for a person."""
    reason = str(exc)
    if "nested too deeply" in reason or isinstance(exc, RecursionError):
        return "The JSON is nested too deeply."
    if "UTF-8" in reason or isinstance(exc, UnicodeDecodeError):
        return "The body is not UTF-8 text."
    return "The body is not valid JSON."


def dependency_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # the database or Redis did not answer, or the connection pool stayed full past its timeout: nothing the
    # client did wrong, and a retry shortly may succeed
    log.warning(
        "dependency unavailable on %s %s: %s: %s",
        request.method,
        request.scope.get("path"),
        type(exc).__name__,
        exc,
        extra={"request_id": request.scope.get("state", {}).get("request_id")},
    )
    return problem(
        503,
        code="unavailable",
        detail="A service keel depends on is not answering; retry shortly.",
        headers={"Retry-After": "2"},
    )


def client_disconnected(request: Request[Any, Any, Any], exc: ClientDisconnected) -> Response[dict[str, Any]]:
    # an aborted upload: one info line, no traceback; the response goes nowhere (the server drops it)
    log.info(
        "client disconnected before its request arrived in full: %s %s",
        request.method,
        request.scope.get("path"),
        extra={"request_id": request.scope.get("state", {}).get("request_id")},
    )
    return problem(400, detail="The request ended before its body arrived in full.")


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # the traceback stays in the log; the client learns only that it was our fault, and the id to quote
    log.error(
        "unhandled exception on %s %s",
        request.method,
        request.scope.get("path"),
        exc_info=exc,
        extra={"request_id": request.scope.get("state", {}).get("request_id")},
    )
    return problem(500, detail="The server failed to handle this request.")


EXCEPTION_HANDLERS: Final = {
    KeelError: keel_error,
    **dict.fromkeys(OUTAGES, dependency_unavailable),
    ValidationException: validation_error,
    ClientDisconnected: client_disconnected,
    SerializationException: unparseable_body,
    HTTPException: http_error,
    Exception: internal_error,
}
