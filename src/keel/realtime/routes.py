"""`/ws` and `/events` in front of the framework's router: pure ASGI, so fan-out reaches the server's own send."""

from __future__ import annotations

from typing import Any

from keel.realtime.events import serve_events
from keel.realtime.websocket import serve_websocket


class RealtimeRoutes:
    def __init__(self, app: Any, state: Any) -> None:
        """Serve the realtime endpoints with `state.realtime` (set by the lifespan); pass the rest to `app`."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path, kind = scope.get("path"), scope["type"]
        if path == "/ws" and kind == "websocket":
            scope["path_template"] = path  # the route of logs, metrics and spans, as Litestar's router names its own
            await serve_websocket(self.state.realtime, scope, receive, send)
        elif path == "/events" and kind == "http" and scope["method"] == "GET":
            scope["path_template"] = path
            await serve_events(self.state.realtime, scope, receive, send)
        else:
            await self.app(scope, receive, send)
