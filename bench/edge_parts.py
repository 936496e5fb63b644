"""What each piece of keel's per-request edge work costs, alone, in instructions: the map behind a change to it.

`.venv/bin/python bench/edge_parts.py [--calls 6400] [--src /path/to/tree/src]`

bench/stack_cpu.py says what a whole request costs; this says which piece of it to cut. Each piece runs `--calls`
times, 64 to an event-loop turn (as the access log's lines share a turn under load), in a child process under
valgrind's callgrind (bench/inprocess.py's Callgrind: the least of three blocks, the collector held off); the
figure is instructions per call, with an empty call's subtracted. `--src` measures another source tree (say, a
worktree of an older commit) with the same pieces, where they exist there. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from operator import methodcaller
from pathlib import Path
from typing import Any

from inprocess import Callgrind, under_callgrind

ROOT = Path(__file__).resolve().parent.parent
PER_TURN = 64
HEADERS = [  # a browser-like request of five headers, none of which the edge wants but Origin
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"*/*"),
    (b"user-agent", b"bench/1"),
    (b"origin", b"https://app.example.com"),
    (b"accept-encoding", b"gzip, br"),
]


def pieces() -> dict[str, Callable[[], Any]]:
    """Each piece as a call with what a `GET /api/v1/public` gives it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from keel import telemetry
    from keel.http import middleware as edge_module
    from keel.logs import AccessLog
    from keel.ratelimit.clients import ClientResolver
    from keel.tracing import LeanProvider

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    # tracing on, with keel's default sampler drawing no new trace: the unsampled request's path
    provider = LeanProvider(Resource({}), Discard(), 0.0, ALWAYS_ON)
    telemetry._provider, telemetry.tracer = provider, provider.get_tracer("keel")
    # and one that samples every request (always_on), whose ended spans wait in its queue, never exported here
    sampled = LeanProvider(Resource({}), Discard(), None, ALWAYS_ON)
    sampled.queue.batch = sampled.queue.max_queue = 1 << 30
    sampled_tracer = sampled.get_tracer("keel")
    # Any: the pieces' signatures differ between the trees this measures (--src)
    middleware: Any = edge_module
    scope: Any = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/public",
        "path_template": "/api/v1/public",
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "headers": HEADERS,
        "state": {},
    }
    log = AccessLog("json", open(os.devnull, "wb"))  # noqa: SIM115  # the child's whole life
    client_ip = ClientResolver([]).client_ip
    edge: Any = middleware.EdgeMiddleware(None, access_log=log, client_ip=client_ip)
    response = [(b"content-type", b"application/json"), (b"content-length", b"20")]

    def server_span() -> None:
        span = telemetry.start_server_span(scope)
        assert span is not None
        span.response_started(200, response)
        span.ids()
        _finish(span)
        span.detach()

    found = {b"origin": HEADERS[3][1]}
    # 123 µs: in ns since 2026-12-05 14:00, in float seconds before (--src)
    in_ns = "duration_ns" in inspect.signature(log.request).parameters

    def access_line() -> None:  # two calls, not **kwargs: unpacking a dict would add ~4 500 instructions to the row
        if in_ns:
            log.request(
                method="GET", route="/api/v1/public", path="/api/v1/public", status=200, duration_ns=123_000,
                request_id="0" * 32, user_id=None, client_ip="127.0.0.1",
            )  # fmt: skip
        else:
            log.request(  # type: ignore[call-arg]  # a tree before 2026-12-05 14:00
                method="GET", route="/api/v1/public", path="/api/v1/public", status=200, duration=0.000123,
                request_id="0" * 32, user_id=None, client_ip="127.0.0.1",
            )  # fmt: skip

    chosen: dict[str, Callable[[], Any]] = {
        "empty call (subtracted from the others)": lambda: None,
        "access line: AccessLog.request (called with keywords, which both forms take)": access_line,
        "client address: ClientResolver.client_ip": lambda: client_ip("127.0.0.1", HEADERS),
        "unsampled server span, start to detach (reads the headers itself)": server_span,
    }
    if hasattr(middleware, "edge_headers"):  # the one pass (2026-12-05) and what it feeds
        chosen["unsampled server span, the edge's headers given"] = lambda: _ended(
            telemetry.start_server_span(scope, found)
        )
        chosen["sampled server span, the edge's headers given, start to detach"] = lambda: _sampled(
            telemetry, sampled, sampled_tracer, scope, found, response
        )
        chosen["the edge's header pass: edge_headers"] = lambda: middleware.edge_headers(HEADERS)
        chosen["a fresh request id: request_id_of(None)"] = lambda: middleware.request_id_of(None)
        chosen["access line with the edge's part: EdgeMiddleware._log"] = lambda: edge._log(
            scope, "GET", "/api/v1/public", 200, 123_000 if in_ns else 0.000123, "0" * 32, None
        )
    else:
        chosen["a fresh request id, the headers scanned: request_id_of"] = lambda: middleware.request_id_of(HEADERS)
        chosen["Origin, scanned with a generator"] = lambda: next((v for n, v in HEADERS if n == b"origin"), None)
        chosen["access line with the edge's part: EdgeMiddleware._log"] = lambda: edge._log(
            scope, "/api/v1/public", 200, 0.000123, "0" * 32, None
        )
    chosen.update(_auth_pieces())
    return chosen


def _auth_pieces() -> dict[str, Callable[[], Any]]:
    """AuthMiddleware over an app that does nothing, as `/api/v1/protected` meets it: the bearer's way and the
    browser's (the same access token as `keel_session`), both verified-claims cache hits."""
    import uuid
    from types import SimpleNamespace

    from litestar.datastructures import State

    from keel.http.auth import AuthMiddleware
    from keel.http.sessions import SessionCookies
    from keel.identity.denylist import Denylist
    from keel.identity.tokens import Keyring
    from keel.identity.verifier import TokenVerifier

    keyring = Keyring.hs256(b"edge-parts-" + b"0" * 32, issuer="keel", audience="keel")
    verifier = TokenVerifier(keyring, Denylist(None, None))  # type: ignore[arg-type]  # no broker: never revoked

    async def renew(refresh: str) -> tuple[str, str]:
        raise AssertionError("a fresh cookie is never renewed")

    cookies = SessionCookies(verifier, renew, max_age=60, secure=True)
    app = SimpleNamespace(state=State({"verifier": verifier, "session_cookies": cookies}))  # Litestar's app.state
    token, _ = keyring.issue_access(user_id=uuid.uuid4(), username="u", session_id=uuid.uuid4(), scopes=(), ttl=3600)

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        pass

    auth = AuthMiddleware(nothing)

    def through(*credential: tuple[bytes, bytes]) -> Callable[[], None]:
        headers = [*HEADERS, *credential]

        def once() -> None:
            scope = {"type": "http", "method": "GET", "headers": headers, "state": {}, "litestar_app": app}
            with contextlib.suppress(StopIteration):  # the inner app never waits: one send runs the whole call
                auth(scope, None, None).send(None)  # type: ignore[arg-type]
            assert (scope["auth"] is not None) == bool(credential)

        return once

    return {
        "no credentials: AuthMiddleware": through(),
        "bearer token: AuthMiddleware": through((b"authorization", f"Bearer {token}".encode())),
        "keel_session cookie: AuthMiddleware": through((b"cookie", f"keel_session={token}".encode())),
    }


def _sampled(telemetry: Any, provider: Any, tracer: Any, scope: Any, found: Any, response: Any) -> None:
    """A sampled request's span as the edge drives it, under a provider that samples everything."""
    unsampled = telemetry._provider, telemetry.tracer
    telemetry._provider, telemetry.tracer = provider, tracer
    span = telemetry.start_server_span(scope, found)
    span.response_started(200, response)
    span.ids()
    _finish(span)
    span.detach()
    telemetry._provider, telemetry.tracer = unsampled


def _ended(span: Any) -> None:
    _finish(span)
    span.detach()


# a server span's end: finish() since keel/server_span.py (2026-12-05), end() in the trees before it (--src)
_finish: Callable[[Any], None] = methodcaller("finish" if importlib.util.find_spec("keel.server_span") else "end")


async def child(calls: int, out_dir: str) -> dict[str, float]:
    chosen = pieces()
    counter = Callgrind(out_dir)
    counter.start()
    counts = {}
    for name, piece in chosen.items():

        async def work(piece: Callable[[], Any] = piece) -> None:
            for _ in range(calls // PER_TURN):
                for _ in range(PER_TURN):
                    piece()
                await asyncio.sleep(0)

        counts[name] = min([(await counter.count(work))[0] for _ in range(3)]) / calls
    empty = counts.pop("empty call (subtracted from the others)")
    return {name: count - empty for name, count in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=6400)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        counts = uvloop.run(child(args.calls, args.callgrind_dir))
        print("| piece | instructions a call |\n|---|---:|")
        for name, count in counts.items():
            print(f"| {name} | {count:,.0f} |")
        return
    out_dir = tempfile.mkdtemp(prefix="keel-callgrind-")
    argv = [sys.executable, __file__, "--child", "--calls", str(args.calls), "--callgrind-dir", out_dir]
    env = {**os.environ, "PYTHONPATH": str(args.src), "PYTHONHASHSEED": "0"}
    done = subprocess.run(under_callgrind(argv, out_dir), env=env, stdout=subprocess.PIPE, text=True, check=True)
    print(f"`{args.src}`, {args.calls} calls a piece, {PER_TURN} a turn\n")
    print(done.stdout.strip())


if __name__ == "__main__":
    main()
