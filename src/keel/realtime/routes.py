"""`/ws` and `/events` in front of the framework's router: pure ASGI, so fan-out reaches the server's own send.

Litestar cannot see them, so `/events` is documented for OpenAPI here (keel.http.openapi adds the problem schema and
headers every error shares). `/ws` is not in OpenAPI, which cannot describe its frames: the AsyncAPI document does.
"""

from __future__ import annotations

from typing import Any, Final

from keel.http.errors import CODE_BY_STATUS, allow_value, problem_body, send_problem
from keel.realtime import tickets
from keel.realtime.events import (
    CHANNEL_PARAM,
    LAST_EVENT_ID_PARAM,
    MAX_CHANNELS,
    RETRY_MS,
    serve_events,
)
from keel.realtime.heartbeats import KEEP_ALIVE
from keel.realtime.websocket import serve_websocket

_EVENT_EXAMPLE: Final = (
    f"retry: {RETRY_MS}\nid: 6f1c…:41\n\n"
    'event: message\nid: 6f1c…:42\ndata: {"id": "…", "channel_id": "6f1c…", "seq": 42, "author": {"id": "…", '
    '"username": "ada"}, "body": "hello", "created_at": "2026-01-01T12:00:00Z"}\n\n'
    ": keep-alive\n\n"
)
EVENTS_OPENAPI: Final[dict[str, Any]] = {
    "get": {
        "tags": ["realtime"],
        "operationId": "realtime_events",
        "summary": "Follow channels as Server-Sent Events",
        "description": (
            "A `text/event-stream` of every new message in the channels named by `channel`. Each message is "
            "`event: message` with the Message JSON as `data:` and an `id:` holding the stream's position in every "
            "channel it follows (`<channel id>:<seq>` pairs joined by `,`). The stream opens with `retry:` and that "
            f"position, and sends a `: keep-alive` comment every {KEEP_ALIVE:g} s. Reconnecting with `Last-Event-ID` "
            "(as EventSource does by itself) resumes every channel in it with nothing missed and nothing twice.\n\n"
            "Authenticate with a bearer token, a ticket from the tickets endpoint (`?ticket=`, single use), or a "
            "browser session cookie from this server's origin or a CORS origin. Opening a stream counts against the "
            "rate limit, and one user holds at most KEEL_MAX_STREAMS_PER_USER streams and WebSockets per instance."
        ),
        "parameters": [
            {
                "name": CHANNEL_PARAM,
                "in": "query",
                "required": True,
                "description": f"A channel id; repeat it to follow up to {MAX_CHANNELS} channels",
                "style": "form",
                "explode": True,
                "schema": {
                    "type": "array",
                    "items": {"type": "string", "format": "uuid"},
                    "minItems": 1,
                    "maxItems": MAX_CHANNELS,
                },
            },
            {
                "name": tickets.QUERY_PARAM,
                "in": "query",
                "required": False,
                "description": "A single-use ticket, for clients that cannot send a header",
                "schema": {"type": "string"},
            },
            {
                "name": LAST_EVENT_ID_PARAM,
                "in": "query",
                "required": False,
                "description": "The Last-Event-ID header's value, for clients that cannot send a header",
                "schema": {"type": "string"},
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The last `id:` received: `<channel id>:<seq>` pairs joined by `,`",
                "schema": {"type": "string", "examples": ["6f1c2b8e-0c1a-4d4e-9b7a-2f0e4c1d9a33:42"]},
            },
        ],
        "security": [{"BearerAuth": []}, {"OAuth2Password": []}, {"SessionCookie": []}, {"RealtimeTicket": []}],
        "responses": {
            "200": {
                "description": "The stream: it stays open until the client leaves, the session is revoked or the "
                "server drains",
                "headers": {"Cache-Control": {"$ref": "#/components/headers/Cache-Control"}},
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string", "description": "Server-Sent Events"},
                        "example": _EVENT_EXAMPLE,
                    }
                },
            },
            "400": {"description": "More than one Authorization header"},
            "401": {"description": "No valid bearer token, ticket or session cookie"},
            "403": {"description": "A session cookie sent from an origin that is neither this server's nor a CORS one"},
            "404": {"description": "A channel does not exist (answered before the stream starts)"},
            "422": {
                "description": f"`channel` is missing, not a UUID, or more than {MAX_CHANNELS}; or Last-Event-ID "
                "is not `<channel id>:<seq>` pairs"
            },
            "429": {"description": "Too many requests, or too many open streams and WebSockets for this user"},
            "503": {"description": "The database or Redis is not answering: retry after Retry-After seconds"},
        },
    }
}


class RealtimeRoutes:
    def __init__(self, app: Any, state: Any) -> None:
        """Serve the realtime endpoints with `state["realtime"]` (set by the lifespan); pass the rest to `app`."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path, kind = scope.get("path"), scope["type"]
        if path == "/ws" and kind == "websocket":
            scope["path_template"] = path  # the route of logs, metrics and spans, as Litestar's router names its own
            await serve_websocket(self.state["realtime"], scope, receive, send)
        elif path == "/events" and kind == "http":
            scope["path_template"] = path
            if scope["method"] == "GET":  # the edge runs HEAD as a GET
                await serve_events(self.state["realtime"], scope, receive, send)
            else:
                detail = f"{scope['method']} is not allowed here."
                body = problem_body(405, code=CODE_BY_STATUS[405], detail=detail)
                await send_problem(send, 405, body, [(b"allow", allow_value(["GET"]).encode())])
        else:
            await self.app(scope, receive, send)
