"""The OpenAPI document keel serves and `keel openapi` writes: Litestar's, completed with what the edge answers.

Litestar documents what a handler declares: its parameters, body, return type and `responses=` (the statuses of
its domain: 404 for a channel that does not exist, 409 for a taken name). Every other status comes from the edge,
before or around the handler, and is added here from the same facts the edge acts on, so it cannot drift from it:

- every route: 400 for two `Authorization` headers (keel.http.auth runs on every route);
- `opt=USER`/`opt=ADMIN`: 401 with `WWW-Authenticate`, 403 for a non-admin, 403 for an unsafe method whose session
  cookie came without `X-CSRF-Token`, and 503 when a session cookie cannot be renewed;
- a body: 413 over KEEL_MAX_BODY_BYTES, 415 for another media type, 422 listing every bad field;
- a query parameter: 422;
- the rate-limited prefix: 429 with `Retry-After`, and `RateLimit`/`RateLimit-Policy` on every answer that passed;
- a database or Redis dependency: 503 with `Retry-After` while it does not answer (keel.shared.errors.OUTAGES);
- a 304: `ETag` on it and an `If-None-Match` parameter;
- `opt={IDEMPOTENT: ...}`: the `Idempotency-Key` parameter, its 409 and 422, and `Idempotent-Replayed` on a 2xx.

Every error is `application/problem+json` with keel's problem schema (Litestar's own 400 schema is replaced), and
request bodies whose struct refuses unknown members say `additionalProperties: false`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.routes import BaseRoute, HTTPRoute

from keel.http.auth import CALLER
from keel.http.deps import DEPENDENCIES
from keel.http.errors import PROBLEM_JSON
from keel.http.idempotency import IDEMPOTENT, KEY_PATTERN, MAX_LENGTH, REPLAYED
from keel.http.requests import ACCEPTS
from keel.http.sessions import UNSAFE_METHODS
from keel.idempotency.errors import HEADER

Document = dict[str, Any]
PROBLEM: Final = "ProblemDetails"
VALIDATION_PROBLEM: Final = "ValidationProblem"
# opt: the handler turns its dependencies' outages into an answer of its own (readiness), so the edge's 503 is not its
ANSWERS_OUTAGES: Final = "answers_outages"
_SCHEMAS: Final = "#/components/schemas/"
_HEADERS: Final = "#/components/headers/"


def _problem_example(status: int, code: str, detail: str, **extensions: Any) -> Document:
    return {
        "type": f"urn:keel:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extensions,
    }


_PROBLEM_MEMBERS: Final[Document] = {
    "type": {"type": "string", "description": "A URI naming the kind of problem: `urn:keel:problem:<code>`"},
    "title": {"type": "string", "description": "A short summary of the kind of problem"},
    "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status"},
    "detail": {"type": "string", "description": "What went wrong this time, for a person"},
    "code": {
        "type": "string",
        "description": "A stable machine-readable code clients may branch on (`accounts.email_taken`)",
    },
}
SCHEMAS: Final[dict[str, Document]] = {
    PROBLEM: {
        "title": "ProblemDetails",
        "description": "RFC 9457 problem details; a problem may carry extension members besides these.",
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": _PROBLEM_MEMBERS,
        "examples": [_problem_example(404, "realtime.channel_not_found", "No channel has that id.")],
    },
    VALIDATION_PROBLEM: {
        "title": "ValidationProblem",
        "description": "A 422: RFC 9457 problem details and, when fields are at fault, every one of them in `errors`.",
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            **_PROBLEM_MEMBERS,
            "errors": {
                "type": "array",
                "description": "Every invalid, missing or unknown field of the request",
                "items": {
                    "type": "object",
                    "required": ["loc", "msg"],
                    "properties": {
                        "loc": {
                            "type": "array",
                            "items": {"type": ["string", "integer"]},
                            "description": 'Where: `["body", "email"]`, `["query", "limit"]`',
                        },
                        "msg": {"type": "string", "description": "What is wrong, as a sentence for a person"},
                    },
                },
            },
        },
        "examples": [
            _problem_example(
                422,
                "http.validation_error",
                "The request is not valid.",
                errors=[{"loc": ["body", "password"], "msg": "Must be at least 8 characters long."}],
            )
        ],
    },
}
HEADERS: Final[dict[str, Document]] = {
    "RateLimit": {
        "description": 'What is left of each policy (draft-ietf-httpapi-ratelimit-headers-10): `"default";r=<requests '
        "left>;t=<seconds until full>`, one member per policy",
        "schema": {"type": "string", "examples": ['"default";r=19;t=1']},
    },
    "RateLimit-Policy": {
        "description": 'The policies that apply: `"default";q=<burst>;w=<seconds>` (and `"auth"` on endpoints that '
        "check a password)",
        "schema": {"type": "string", "examples": ['"default";q=20;w=2']},
    },
    "Retry-After": {
        "description": "Whole seconds to wait before retrying (at least 1)",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": '`Bearer`, or `Bearer error="invalid_token"` when the token or session given is not accepted',
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "Strong validator of the body; send it back in If-None-Match",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "`private, no-cache`: revalidate by ETag", "schema": {"type": "string"}},
    "Allow": {
        "description": "On a 405 (a method the path does not serve): the methods it does serve",
        "schema": {"type": "string"},
    },
    REPLAYED: {
        "description": "`true` when this is the recorded answer of an earlier request with the same Idempotency-Key; "
        "absent on a first answer",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
}
# sent by every response; documented on requests, where a client chooses it
REQUEST_ID: Final[Document] = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Your id for this request: when it is 1 to 128 of A-Z a-z 0-9 . _ - it is echoed in the "
    "X-Request-ID response header and written to the log line and trace; any other value (or none) is replaced by "
    "a generated id, never refused.",
    # no pattern: a value outside it is replaced, not refused, and the document must not promise a refusal
    "schema": {"type": "string"},
}
IF_NONE_MATCH: Final[Document] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The ETag of the copy you hold: 304 with no body while it is current",
    "schema": {"type": "string"},
}
IDEMPOTENCY_KEY: Final[Document] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes a retry safe (draft-ietf-httpapi-idempotency-key-header): a repeat with this key within "
    "24 h, by the same caller with the same request, gets the first answer again (marked Idempotent-Replayed) and "
    "is not done twice. Only successes are recorded: a request that failed may be retried with its key.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_LENGTH, "pattern": KEY_PATTERN},
}
KEY_IN_USE = "a request with this Idempotency-Key is still in flight (`http.idempotency_key_in_use`): retry shortly"
KEY_INVALID = (
    "Idempotency-Key is not 1 to 255 visible ASCII characters, or was used with another request "
    "(`http.idempotency_key_reused`)"
)
# any path, for a method it does not serve: no operation answers it, so it is documented once, here
METHOD_NOT_ALLOWED: Final[Document] = {
    "description": "The path does not serve this method; Allow lists those it does",
    "headers": {"Allow": {"$ref": _HEADERS + "Allow"}},
    "content": {PROBLEM_JSON: {"schema": {"$ref": _SCHEMAS + PROBLEM}}},
}
# the edge's reasons for each status, as the descriptions of the responses that document them
AMBIGUOUS = "more than one Authorization header"
UNAUTHENTICATED = "no valid credentials: the bearer token or session cookie is missing, expired or revoked"
NOT_ADMIN = "the caller is not an admin"
CSRF = "a session-cookie request without X-CSRF-Token equal to the keel_csrf cookie"
TOO_LARGE = "the body is larger than KEEL_MAX_BODY_BYTES"
MEDIA_TYPE = "the body is not {}"
INVALID_BODY = "the body is not valid JSON, or some of its fields are invalid, missing or unknown (`errors` lists all)"
INVALID_QUERY = "a query parameter is invalid (`errors` says which)"
LIMITED = "too many requests: wait Retry-After seconds"
OUTAGE = "the database or Redis is not answering: retry after Retry-After seconds"
SESSION_RENEWAL = "a session cookie could not be renewed"


@dataclass(frozen=True)
class Edge:
    """What the document needs to know of layers above keel.http: where the limiter acts, and paths served in
    front of the framework (documented by their own modules)."""

    limited_prefix: str
    extra_paths: Mapping[str, Document] = field(default_factory=dict)


def complete(document: Document, routes: Iterable[BaseRoute], edge: Edge) -> Document:
    """`document` (Litestar's, as a dict) with every status the edge answers, for the handlers of `routes`."""
    _rename_generic_schemas(document)
    components = document.setdefault("components", {})
    # copies: the document is the caller's to change, the constants are not
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    components["headers"] = copy.deepcopy(HEADERS)
    components["responses"] = {"MethodNotAllowed": copy.deepcopy(METHOD_NOT_ALLOWED)}
    for route in routes:
        if not isinstance(route, HTTPRoute):
            continue
        item = document["paths"].get(route.path_format or "/", {})
        for method, (handler, _) in route.route_handler_map.items():
            operation = item.get(method.lower())
            if operation is not None:
                _complete_operation(operation, handler, method, route.path_format, edge, components["schemas"])
    for path, documented in edge.extra_paths.items():  # documented whole by their modules: only the shared parts here
        item = copy.deepcopy(documented)
        for operation in item.values():
            for status, response in operation["responses"].items():
                _finish_response(int(status), response, is_limited=False)
            operation.setdefault("parameters", []).append(copy.deepcopy(REQUEST_ID))
        document["paths"][path] = item
    return document


def _complete_operation(
    operation: Document, handler: HTTPRouteHandler, method: str, path: str, edge: Edge, schemas: Document
) -> None:
    caller = handler.opt.get(CALLER)
    parameters = handler.parsed_fn_signature.parameters
    accepts: tuple[str, ...] = tuple(handler.opt.get(ACCEPTS, ()))
    if "data" in parameters:
        accepts = accepts or tuple(operation.get("requestBody", {}).get("content", {}))
        _forbid_unknown_members(operation, parameters["data"].annotation, schemas)
    is_limited = path.startswith(edge.limited_prefix)
    reasons: dict[int, list[str]] = {400: [AMBIGUOUS]}
    if caller is not None:
        reasons[401] = [UNAUTHENTICATED]
        reasons[403] = [NOT_ADMIN] if caller == "admin" else []
        if method in UNSAFE_METHODS:
            reasons[403].append(CSRF)
        reasons[503] = [SESSION_RENEWAL]
    if accepts:
        reasons[413] = [TOO_LARGE]
        reasons[415] = [MEDIA_TYPE.format(" or ".join(accepts))]
        reasons[422] = [INVALID_BODY]
    if any(parameter.get("in") == "query" for parameter in operation.get("parameters", ())):
        reasons.setdefault(422, []).append(INVALID_QUERY)
    if is_limited:
        reasons[429] = [LIMITED]
    is_idempotent = IDEMPOTENT in handler.opt
    # a handler reaches the database or Redis through a dependency, or through its idempotency record (which lives in
    # the database) even when it opens its session itself
    if (DEPENDENCIES.keys() & parameters.keys() or is_idempotent) and not handler.opt.get(ANSWERS_OUTAGES):
        reasons.setdefault(503, []).insert(0, OUTAGE)
    if is_idempotent:
        reasons.setdefault(409, []).append(KEY_IN_USE)
        reasons.setdefault(422, []).append(KEY_INVALID)
    responses: Document = operation["responses"]
    for status, edge_reasons in reasons.items():
        if edge_reasons:
            responses[str(status)] = _merge(responses.get(str(status)), status, edge_reasons)
    for code, response in responses.items():
        _finish_response(int(code), response, is_limited=is_limited)
        if is_idempotent and code.startswith("2"):
            response.setdefault("headers", {})[REPLAYED] = _header(REPLAYED)
    operation["responses"] = dict(sorted(responses.items()))
    parameters_doc = operation.setdefault("parameters", [])
    if "304" in responses:
        parameters_doc.append(copy.deepcopy(IF_NONE_MATCH))
    if is_idempotent:
        parameters_doc.append(copy.deepcopy(IDEMPOTENCY_KEY))
    parameters_doc.append(copy.deepcopy(REQUEST_ID))


def _merge(declared: Document | None, status: int, reasons: list[str]) -> Document:
    """The response for `status`: the handler's own reason first (Litestar's generic 400 text is not one)."""
    own = [] if declared is None or status == 400 else [declared["description"]]
    text = "; ".join([*own, *reasons])
    return {**(declared or {}), "description": text[:1].upper() + text[1:]}


def _finish_response(status: int, response: Document, *, is_limited: bool) -> None:
    headers: Document = {}
    if status in (204, 304):  # no body, whatever the handler's return type made Litestar say
        response.pop("content", None)
    if status < 400:
        if is_limited:
            headers = {"RateLimit": _header("RateLimit"), "RateLimit-Policy": _header("RateLimit-Policy")}
        if status == 304:
            headers.update(ETag=_header("ETag"), **{"Cache-Control": _header("Cache-Control")})
        response["headers"] = {**response.get("headers", {}), **headers}
        if not response["headers"]:
            del response["headers"]
        return
    media_type = response.get("content", {}).get(PROBLEM_JSON, {})
    schema = media_type.get("schema")
    if schema is None or schema.get("$ref") == _SCHEMAS + PROBLEM:  # Litestar's 400, or keel's plain problem
        schema = {"$ref": _SCHEMAS + (VALIDATION_PROBLEM if status == 422 else PROBLEM)}
    response["content"] = {PROBLEM_JSON: {**media_type, "schema": schema}}
    if status == 401:
        headers["WWW-Authenticate"] = _header("WWW-Authenticate")
    if status == 429:
        headers.update(RateLimit=_header("RateLimit"), **{"RateLimit-Policy": _header("RateLimit-Policy")})
    if status in (429, 503):
        headers["Retry-After"] = _header("Retry-After")
    if headers:
        response["headers"] = headers


def _header(name: str) -> Document:
    return {"$ref": _HEADERS + name}


def _forbid_unknown_members(operation: Document, annotation: Any, schemas: Document) -> None:
    """`additionalProperties: false` on the schema of a body whose struct refuses unknown members (SPEC §2)."""
    if not (isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)):
        return
    if not annotation.__struct_config__.forbid_unknown_fields:
        return
    for media_type in operation["requestBody"]["content"].values():
        schema = media_type["schema"]
        ref = schema.get("$ref", "")
        target = schemas[ref.removeprefix(_SCHEMAS)] if ref.startswith(_SCHEMAS) else schema
        target["additionalProperties"] = False


def _rename_generic_schemas(document: Document) -> None:
    """`PageChannelRead` for Litestar's `Page_keel.realtime.schemas.ChannelRead_`: a name a generated client can use
    for its class (the schema's title, `Page[ChannelRead]`, without its brackets)."""
    schemas: Document = document.get("components", {}).get("schemas", {})
    renames = {
        _SCHEMAS + name: _SCHEMAS + re.sub(r"\W", "", schema["title"])
        for name, schema in schemas.items()
        if re.fullmatch(r"\w+", name) is None and "title" in schema
    }
    if not renames:
        return
    for old, new in renames.items():
        schemas[new.removeprefix(_SCHEMAS)] = schemas.pop(old.removeprefix(_SCHEMAS))
    _replace_refs(document, renames)


def _replace_refs(node: Any, renames: Mapping[str, str]) -> None:
    if isinstance(node, dict):
        if isinstance(ref := node.get("$ref"), str) and ref in renames:
            node["$ref"] = renames[ref]
        for value in node.values():
            _replace_refs(value, renames)
    elif isinstance(node, list):
        for value in node:
            _replace_refs(value, renames)
