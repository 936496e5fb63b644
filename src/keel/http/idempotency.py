"""The `Idempotency-Key` header (SPEC §6) at the edge: checked here, and the keyed write run through keel.idempotency.

A handler that takes the header says so with `opt={IDEMPOTENT: <operation>}` (the OpenAPI document reads it) and
asks for `idempotency: Idempotent`; `await idempotency.run(...)` runs its write once per key and answers a replay
with the recorded status and body, marked `Idempotent-Replayed: true`.

The operation names the endpoint without its API version (`POST /channels/{channel_id}/messages`): v1 and v2 are one
service, and a WebSocket publish with the same key is the same operation too. The scope is the caller: the
authenticated user, or for a sign-up the client address by keel's trusted-proxy rule.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
from litestar import Request, Response
from litestar.di import NamedDependency, Provide
from litestar.enums import MediaType
from litestar.exceptions import ValidationException
from sqlalchemy.ext.asyncio import AsyncSession

from keel.http.scope import caller_of
from keel.idempotency.errors import HEADER
from keel.idempotency.service import Claim, Idempotency, Outcome

T = TypeVar("T")

IDEMPOTENT: Final = "idempotent"  # opt: the operation name of a handler that takes Idempotency-Key
REPLAYED: Final = "Idempotent-Replayed"  # on a replayed answer (the name Stripe and others use)
MAX_LENGTH: Final = 255
# SPEC §6: 1-255 visible ASCII characters; a space is not one, nor is anything past 0x7E
KEY_PATTERN: Final = f"^[\\x21-\\x7E]{{1,{MAX_LENGTH}}}$"
_KEY: Final = re.compile(KEY_PATTERN)
_MAX_SCOPE: Final = 80  # the record's scope column
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class IdempotencyEdge:
    """What the provider needs, built by the composition root: the service and keel's client-address rule."""

    service: Idempotency
    client_ip: Callable[[str | None, Any], str]


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A handler's way to run its write once per Idempotency-Key; without the header it simply runs it."""

    service: Idempotency
    scope: str
    operation: str
    key: str | None

    async def run(
        self,
        session: AsyncSession,
        work: Callable[[Claim | None], Awaitable[T]],
        *,
        data: msgspec.Struct,
        target: str = "",
        status: int = 201,
    ) -> Response[Any]:
        """`work`'s result as a `status` response, or the recorded answer of this key's first request."""
        attempt = None
        if self.key is not None:
            # the canonical request: the path's target and the decoded body re-encoded (member order, spacing and
            # escapes of the client's JSON do not matter)
            request = target.encode() + b"\0" + _encoder.encode(data)
            attempt = self.service.attempt(scope=self.scope, operation=self.operation, key=self.key, request=request)
        result = await self.service.run(session, attempt, work, status=status)
        if isinstance(result, Outcome):
            headers = {**result.headers, REPLAYED: "true"}
            return Response(result.body, status_code=result.status, media_type=MediaType.JSON, headers=headers)
        return Response(result, status_code=status)


def parse_key(values: list[str]) -> str | None:
    """The one Idempotency-Key of a request, None without one; a 422 naming the header when it is not valid."""
    if not values:
        return None
    if len(values) > 1:
        problem = "Send Idempotency-Key once."
    elif _KEY.match(values[0]) is None:
        problem = f"Must be 1 to {MAX_LENGTH} visible ASCII characters (no spaces)."
    else:
        return values[0]
    raise ValidationException(detail="The request is not valid.", extra=[{"loc": ["header", HEADER], "msg": problem}])


def provide_keyed_request(request: Request[Any, Any, Any]) -> KeyedRequest:
    edge: IdempotencyEdge = request.app.state["idempotency"]
    key = parse_key(request.headers.getall(HEADER, []))
    claims = caller_of(request.scope)
    if claims is not None:
        scope = "user:" + claims.subject
    else:
        client = request.scope.get("client")
        scope = f"ip:{edge.client_ip(client[0] if client else None, request.scope['headers'])}"
        if len(scope) > _MAX_SCOPE:  # a peer that is not an address (a unix socket path) can be long
            scope = f"ip#{hashlib.sha256(scope.encode()).hexdigest()}"
    return KeyedRequest(edge.service, scope, request.route_handler.opt[IDEMPOTENT], key)


Idempotent = NamedDependency[KeyedRequest]
DEPENDENCIES: Final = {"idempotency": Provide(provide_keyed_request, sync_to_thread=False)}
