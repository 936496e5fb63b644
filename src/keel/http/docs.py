"""OpenAPI 3.1 at /api-docs/openapi.json and Swagger UI at /swagger-ui, every asset served by keel (no CDN), and the
AsyncAPI document at /api-docs/asyncapi.json (built by keel.realtime.asyncapi; this module only serves it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from litestar import Litestar, Request, Router, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, SecurityScheme, Tag
from litestar.response import Response
from litestar.static_files import create_static_files_router

from keel.http.caching import entity_tag, is_current

ASSETS: Final = Path(__file__).parent / "static" / "swagger-ui"
SWAGGER_PAGE: Final = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>keel API</title>
<link rel="icon" type="image/png" href="/swagger-ui/assets/favicon-32x32.png">
<link rel="stylesheet" href="/swagger-ui/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/swagger-ui/assets/swagger-ui-bundle.js"></script>
<script src="/swagger-ui/assets/keel-init.js"></script>
</body>
</html>
"""


DESCRIPTION: Final = """Accounts, JWT auth, rate limiting and realtime channels.

Every operation lists every status it can answer. Every error is RFC 9457 `application/problem+json` with a stable
`code` to branch on; a 422 lists every invalid field in `errors`. Besides the statuses an operation lists, any request
may meet 405 with `Allow` (a method the path does not serve), 431 or a closed connection (a header block over 64 KiB),
and 500 (a fault of the server's, with nothing of its internals in the body).

`HEAD` works wherever `GET` does. Responses under /api/ carry `RateLimit` and `RateLimit-Policy`; every response
carries `X-Request-ID`. The WebSocket at /ws and the frames of /events are described by the
[AsyncAPI document](/api-docs/asyncapi.json)."""


class OpenAPIDocument(JsonRenderPlugin):
    """Serves keel's document (Litestar's, completed by keel.http.openapi), built on the first request."""

    def __init__(self, document: Callable[[Litestar], dict[str, Any]]) -> None:
        super().__init__(path="/openapi.json")
        self._document = document
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = self.render_json(request, self._document(request.app))
        return self._rendered


def openapi_config(version: str, document: Callable[[Litestar], dict[str, Any]]) -> OpenAPIConfig:
    """Litestar's OpenAPI settings; `document(app)` is what /api-docs/openapi.json serves and `keel openapi` writes."""
    return OpenAPIConfig(
        title="keel",
        version=version,
        description=DESCRIPTION,
        path="/api-docs",
        render_plugins=[OpenAPIDocument(document)],
        components=Components(
            security_schemes={
                "BearerAuth": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
                # a browser session (POST /api/v1/auth/session); unsafe methods also send X-CSRF-Token = keel_csrf
                "SessionCookie": SecurityScheme(
                    type="apiKey",
                    name="keel_session",
                    security_scheme_in="cookie",
                    description="A browser session from POST /api/v1/auth/session. POST, PUT, PATCH and DELETE "
                    "authenticated by it must also send X-CSRF-Token equal to the keel_csrf cookie.",
                ),
                # /events (and /ws) only: what a browser uses when it cannot send a header and holds no session
                "RealtimeTicket": SecurityScheme(
                    type="apiKey",
                    name="ticket",
                    security_scheme_in="query",
                    description="A single-use ticket from POST /api/v2/realtime/tickets, valid 60 s.",
                ),
                # Swagger UI's Authorize dialog logs in with the password grant and then sends the bearer token
                "OAuth2Password": SecurityScheme(
                    type="oauth2",
                    flows=OAuthFlows(
                        password=OAuthFlow(token_url="/api/v1/auth/token", scopes={"admin": "Administer accounts"})  # noqa: S106
                    ),
                ),
            }
        ),
        tags=[
            Tag(name="auth", description="Tokens, browser sessions and signing keys"),
            Tag(name="users", description="Accounts: sign-up, the caller's profile, passwords, the user list"),
            Tag(name="channels", description="Channels and their messages"),
            Tag(name="realtime", description="Tickets and streams for WebSocket and Server-Sent Events"),
            Tag(name="ops", description="Liveness, readiness and documentation"),
        ],
        use_handler_docstrings=True,
    )


@get("/swagger-ui", include_in_schema=False, media_type="text/html", sync_to_thread=False)
def swagger_ui() -> Response[bytes]:
    return Response(SWAGGER_PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})


def asyncapi_handler(document: bytes) -> HTTPRouteHandler:
    """`GET /api-docs/asyncapi.json`: `document` as it is, revalidated by its ETag (it changes only with a deploy)."""
    etag = entity_tag(document)
    headers = {"Cache-Control": "no-cache", "ETag": etag}

    @get("/api-docs/asyncapi.json", include_in_schema=False, sync_to_thread=False)
    def asyncapi(request: Request[Any, Any, Any]) -> Response[bytes]:
        if is_current(request.headers.get("if-none-match"), etag):
            return Response(b"", status_code=304, headers=headers)
        return Response(document, media_type="application/json", headers=headers)

    return asyncapi


def docs_router(asyncapi: bytes) -> Router:
    """Swagger UI with its assets, and the AsyncAPI document `asyncapi`."""
    assets = create_static_files_router(
        path="/swagger-ui/assets",
        directories=[ASSETS],
        include_in_schema=False,
        cache_control=None,
        name="swagger-ui-assets",
    )
    return Router(path="/", route_handlers=[swagger_ui, assets, asyncapi_handler(asyncapi)])
