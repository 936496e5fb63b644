"""Rate limiting for HTTP: one pure-ASGI middleware after auth, and the headers of SPEC §5.

Every request under /api/ is checked against the default policy, keyed by the authenticated user (the claims
the auth middleware left in the scope: no second verification) or else the client address. Endpoints that
check a password (`opt={"rate_limit": "auth"}`: the token endpoint, a password change) are checked against the
auth policy too, by address: a brute-force guard that holds whatever name the guesser tries. When the request
is authenticated (a password change) the user has an auth bucket of their own as well, so a stolen access
token used from many addresses still gets one budget of `current_password` guesses. Operations and docs live
outside /api/ and are never limited.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from keel import telemetry
from keel.http.errors import problem_body, send_problem
from keel.http.requests import RATE_LIMIT
from keel.http.scope import add_response_headers, caller_of
from keel.ratelimit.clients import ClientResolver
from keel.ratelimit.gcra import Decision
from keel.ratelimit.limiter import RATE_LIMITED, Limiter
from keel.settings import RatePolicy

AUTH_POLICY: Final = "auth"
DEFAULT_POLICY: Final = "default"
for _policy in (AUTH_POLICY, DEFAULT_POLICY):  # exported at 0 from the start, so dashboards and rate() see them
    RATE_LIMITED.labels(_policy)
API_PREFIX: Final = "/api/"


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    name: str
    policy: RatePolicy
    header: bytes  # its member of RateLimit-Policy, e.g. b'"default";q=20;w=2', encoded once per process
    limit: bytes  # its member of RateLimit with the two numbers to fill in, b'"default";r=%d;t=%d'
    exact: bool = False  # never answered from a lease of the Redis limiter (keel.ratelimit.lease)

    @classmethod
    def of(cls, name: str, policy: RatePolicy, *, exact: bool = False) -> NamedPolicy:
        # draft-ietf-httpapi-ratelimit-headers-10: q is the quota (the burst), w its window in seconds
        window = max(1, math.ceil(policy.burst * policy.emission_interval))
        header = f'"{name}";q={policy.burst};w={window}'.encode()
        return cls(name, policy, header, f'"{name}";r=%d;t=%d'.encode(), exact)

    def state(self, decision: Decision) -> bytes:
        """Its member of RateLimit for `decision`: r = requests left, t = seconds until full."""
        return self.limit % (decision.remaining if decision.allowed else 0, math.ceil(decision.reset_after))


@dataclass(frozen=True)
class RateLimits:
    """The limiter with its policies and client rule; the realtime endpoints check through `check` too."""

    limiter: Limiter
    clients: ClientResolver
    default: NamedPolicy | None  # None: that policy is off
    auth: NamedPolicy | None

    def client_key(self, scope: Scope) -> str:
        claims = caller_of(scope)
        if claims is not None:
            return "user:" + claims.subject
        return self.address_key(scope)

    def address_key(self, scope: Scope) -> str:
        client = scope.get("client")
        return self.clients.rate_key(client[0] if client else None, scope["headers"])

    async def admit_address(self, address_key: str) -> bool:
        """One more mail to this address (its canonical key) under the auth policy, counted per address (SPEC §4)."""
        if self.auth is None:
            return True
        # hashed: the limiter's keys (in Redis too) hold no one's address
        bucket = "mail:" + hashlib.sha256(address_key.encode()).hexdigest()[:32]
        return (await self._check(bucket, self.auth)).allowed

    async def check(self, scope: Scope, *, auth_policy: bool = False) -> list[tuple[NamedPolicy, Decision]]:
        """Decisions for this connection: the default policy, plus the auth policy when asked.

        The auth policy counts by address and, for an authenticated caller, by user too; it reports the
        stricter of the two, so the headers name each policy once.
        """
        # A span of its own only around the auth policy (logins, sign-ups: where a refusal is worth tracing). The
        # default policy's in-process check takes ~2 µs and a recorded span costs more than that; a refused
        # request's server span carries its 429, and the Redis limiter's call gets its own Redis span anyway.
        if telemetry.tracer is None or not auth_policy:
            return await self._check_all(scope, auth_policy)
        span = telemetry.start_span("ratelimit.check")
        try:
            results = await self._check_all(scope, auth_policy)
            span.set_attribute("keel.ratelimit.allowed", all(decision.allowed for _, decision in results))
            return results
        finally:
            span.end()

    def check_default_now(self, scope: Scope) -> list[tuple[NamedPolicy, Decision]] | None:
        """`check` of a request only the default policy covers, without a coroutine, when the limiter answers at once
        (in-process, or a lease's token); None when the caller must await `check`. Most requests end here: two
        coroutines fewer per request (BENCHMARKS.md, 2026-12-04 section "keel's per-request stack")."""
        if (named := self.default) is None:
            return []
        decision = self.limiter.check_now(self.client_key(scope), named.policy, named.name, exact=named.exact)
        return None if decision is None else [(named, decision)]

    async def _check_all(self, scope: Scope, auth_policy: bool) -> list[tuple[NamedPolicy, Decision]]:
        results = []
        if self.default is not None:
            results.append((self.default, await self._check(self.client_key(scope), self.default)))
        if auth_policy and self.auth is not None:
            buckets = [self.address_key(scope)]
            if caller_of(scope) is not None:
                buckets.append(self.client_key(scope))  # user:<id>
            decisions = [await self._check(bucket, self.auth) for bucket in buckets]
            results.append((self.auth, min(decisions, key=_strictness)))
        return results

    async def _check(self, bucket: str, named: NamedPolicy) -> Decision:
        decision = self.limiter.check_now(bucket, named.policy, named.name, exact=named.exact)
        if decision is None:  # the Redis limiter without a lease's token: awaited, batched with this tick's others
            decision = await self.limiter.check(bucket, named.policy, named.name, exact=named.exact)
        return decision


def _strictness(decision: Decision) -> tuple[bool, int, float]:
    # a refusal first (the longest wait first), then the fewest requests left
    return decision.allowed, decision.remaining, -decision.retry_after


def rate_limit_headers(results: Sequence[tuple[NamedPolicy, Decision]]) -> list[tuple[bytes, bytes]]:
    """`RateLimit-Policy` and `RateLimit` for these decisions."""
    if len(results) == 1:  # the default policy alone, as on every request but a login: no joins (~0.5 µs)
        named, decision = results[0]
        return [(b"ratelimit-policy", named.header), (b"ratelimit", named.state(decision))]
    policies = b", ".join(named.header for named, _ in results)
    return [(b"ratelimit-policy", policies), (b"ratelimit", b", ".join(named.state(d) for named, d in results))]


def retry_after(results: Iterable[tuple[NamedPolicy, Decision]]) -> int | None:
    """Whole seconds until every refusing policy admits a request again (at least 1), or None if none refused."""
    waits = [decision.retry_after for _, decision in results if not decision.allowed]
    return max(1, math.ceil(max(waits))) if waits else None


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        limits: RateLimits = scope["litestar_app"].state["rate_limits"]
        handler = scope.get("route_handler")
        auth_policy = handler is not None and handler.opt.get(RATE_LIMIT) == AUTH_POLICY
        results = None if auth_policy else limits.check_default_now(scope)
        if results is None:
            results = await limits.check(scope, auth_policy=auth_policy)
        if not results:  # every policy that applies is off
            await self.app(scope, receive, send)
            return
        headers = rate_limit_headers(results)
        wait = retry_after(results)
        if wait is not None:
            await self._refuse(send, headers, wait, [named.name for named, d in results if not d.allowed])
            return
        # the edge's send wrapper writes them on whatever response follows: no wrapper of our own (a closure and an
        # await per message: measured in BENCHMARKS.md, 2026-12-04 section "keel's per-request stack")
        add_response_headers(scope, headers)
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Send, headers: list[tuple[bytes, bytes]], wait: int, policies: list[str]) -> None:
        body = problem_body(
            429, code="rate_limited", detail=f"Too many requests ({', '.join(policies)} policy); retry in {wait} s."
        )
        await send_problem(send, 429, body, [*headers, (b"retry-after", str(wait).encode())])
