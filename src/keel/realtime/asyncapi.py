"""The AsyncAPI 3 document of `/ws` and `/events` (SPEC §3, §7, §8), built from what the server itself runs on.

Frame schemas are msgspec's own view of the structs frames.py decodes and encodes with, and every member of its
ClientFrame and ServerFrame unions becomes a message; the SSE event name, `id:` pattern, `retry:` and query
parameters come from events.py, the close codes from errors.py, the frame limits from websocket.py. Nothing here
restates a shape, so the document follows the code (tests/realtime/test_asyncapi.py holds a live server to it).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Final

import msgspec

from keel.http.sessions import SESSION_COOKIE
from keel.realtime import events, frames, tickets
from keel.realtime.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_REVOKED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_TRY_LATER,
)
from keel.realtime.heartbeats import KEEP_ALIVE
from keel.realtime.schemas import MessageRead
from keel.realtime.websocket import MAX_FRAME_BYTES, PING_INTERVAL, PING_TIMEOUT

SCHEMA: Final = "#/components/schemas/{name}"
DEFAULT_HOST: Final = "127.0.0.1:3000"  # KEEL_HOST:KEEL_PORT's defaults (SPEC §1)

Frame = type[msgspec.Struct]
# what the server answers each client frame with; any of them may instead be answered with an error frame
REPLIES: Final[dict[Frame, Frame]] = {
    frames.Subscribe: frames.Subscribed,
    frames.Unsubscribe: frames.Unsubscribed,
    frames.Publish: frames.Published,
    frames.Ping: frames.Pong,
}

CLOSE_CODES: Final = {
    CLOSE_GOING_AWAY: "The server is shutting down; in-flight publishes completed. Reconnect and resume.",
    CLOSE_TOO_BIG: f"A frame over {MAX_FRAME_BYTES // 1024} KiB.",
    CLOSE_INTERNAL_ERROR: f"No answer to the server's protocol ping within {PING_TIMEOUT:g} s (pings go every "
    f"{PING_INTERVAL:g} s), or an internal error.",
    CLOSE_TRY_AGAIN: "The live feed may have missed messages (a database or broker outage). Reconnect and resume.",
    CLOSE_TRY_LATER: "Too slow: the unsent backlog passed KEEL_WS_SEND_QUEUE. Reconnect and resume.",
    CLOSE_REVOKED: "The session was revoked (logout, password change, refresh-token reuse). Authenticate again.",
}

SECURITY_SCHEMES: Final = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from POST /api/v1/auth/token in `Authorization` on the upgrade (or "
        "stream) request.",
    },
    "ticket": {
        "type": "httpApiKey",
        "name": tickets.QUERY_PARAM,
        "in": "query",
        "description": f"A single-use ticket from POST /api/v1/realtime/tickets, valid {tickets.TICKET_TTL} s: "
        "for browsers, which cannot set a header on a WebSocket or an EventSource.",
    },
    "sessionCookie": {
        "type": "httpApiKey",
        "name": SESSION_COOKIE,
        "in": "cookie",
        "description": "A browser session from POST /api/v1/auth/session, accepted only when `Origin` is this "
        "server's origin or one of KEEL_CORS_ORIGINS (else 403).",
    },
}


def build(version: str) -> dict[str, object]:
    """The AsyncAPI 3.0 document, for keel `version`."""
    client, server = typing.get_args(frames.ClientFrame), typing.get_args(frames.ServerFrame)
    _, schemas = msgspec.json.schema_components([*client, *server, MessageRead], ref_template=SCHEMA)
    ws_messages = {_tag(frame): _frame_message(frame) for frame in (*client, *server)}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "keel realtime",
            "version": version,
            "description": "Live channel messages over WebSocket (`/ws`) and Server-Sent Events (`/events`). The "
            "REST API, the tickets and sessions these accept included, is in /api-docs/openapi.json.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "ws": _server("ws", "WebSocket (`wss` behind TLS)"),
            "http": _server("http", "HTTP (`https` behind TLS)"),
        },
        "channels": {
            "ws": _ws_channel(ws_messages),
            "events": _events_channel(),
        },
        "operations": {
            **{f"receive{_tag(frame).title()}": _receive(frame) for frame in client},
            **{f"send{_tag(frame).title()}": _send("ws", frame) for frame in server if frame not in REPLIES.values()},
            "sendEvents": _events_operation(),
        },
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _tag(frame: Frame) -> str:
    return str(frame.__struct_config__.tag)


def _ref(pointer: str) -> dict[str, str]:
    return {"$ref": pointer}


def _server(protocol: str, title: str) -> dict[str, Any]:
    return {
        "host": "{host}",
        "protocol": protocol,
        "title": title,
        "variables": {"host": {"default": DEFAULT_HOST, "description": "Where keel answers: host and port."}},
        # any one of them authenticates
        "security": [_ref(f"#/components/securitySchemes/{name}") for name in SECURITY_SCHEMES],
    }


def _frame_message(frame: Frame) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": _tag(frame),
        "title": frame.__name__,
        "summary": inspect.getdoc(frame),
        "payload": _ref(SCHEMA.format(name=frame.__name__)),
    }
    if "ref" in frame.__struct_fields__:
        echoes = ", ".join(f"`{_tag(f)}`" for f in typing.get_args(frames.ServerFrame) if "ref" in f.__struct_fields__)
        message["correlationId"] = {
            "location": "$message.payload#/ref",
            "description": f"A client frame's `ref`, echoed by the {echoes} frame that answers it.",
        }
    return message


def _ws_channel(messages: dict[str, Any]) -> dict[str, Any]:
    codes = "\n".join(f"| {code} | {meaning} |" for code, meaning in CLOSE_CODES.items())
    return {
        "address": "/ws",
        "title": "WebSocket",
        "description": "JSON text frames both ways, handled in order. Authentication happens on the upgrade "
        "request (any one of the server's security schemes); without it the handshake is refused with "
        "problem+json (401, 403, 429 or 503) and no socket opens. A malformed frame is answered with an `error` "
        "frame and the socket stays open. Resume after a reconnect with `since` on `subscribe`.\n\n"
        f"Close codes (also in `x-close-codes`):\n\n| code | meaning |\n| --- | --- |\n{codes}",
        "servers": [_ref("#/servers/ws")],
        "messages": messages,
        "bindings": {
            "ws": {
                "method": "GET",
                "query": {
                    "type": "object",
                    "properties": {tickets.QUERY_PARAM: {"type": "string", "description": "A ticket (see security)"}},
                },
                "bindingVersion": "0.1.0",
            }
        },
        "x-close-codes": {str(code): meaning for code, meaning in CLOSE_CODES.items()},
    }


def _receive(frame: Frame) -> dict[str, Any]:
    return {
        "action": "receive",
        "channel": _ref("#/channels/ws"),
        "summary": inspect.getdoc(frame),
        "messages": [_ref(f"#/channels/ws/messages/{_tag(frame)}")],
        "reply": {
            "channel": _ref("#/channels/ws"),
            "messages": [_ref(f"#/channels/ws/messages/{_tag(reply)}") for reply in (REPLIES[frame], frames.Error)],
        },
    }


def _send(channel: str, frame: Frame) -> dict[str, Any]:
    return {
        "action": "send",
        "channel": _ref(f"#/channels/{channel}"),
        "summary": inspect.getdoc(frame),
        "messages": [_ref(f"#/channels/{channel}/messages/{_tag(frame)}")],
    }


def _event_id(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": events.EVENT_ID_PATTERN, "description": description}


def _events_channel() -> dict[str, Any]:
    position = "The stream's position in every channel it follows"
    return {
        "address": "/events",
        "title": "Server-Sent Events",
        "description": "`text/event-stream`. A message's `headers` here are the event's SSE fields and its "
        "`payload` the event's `data:`. First, once, a `position` event (no `data:`, so no event fires in "
        f"EventSource, but it keeps the id); then a `{events.MESSAGE_EVENT}` event per message, in seq order per "
        f"channel; a `: keep-alive` comment every {KEEP_ALIVE:g} s. To resume after a reconnect send the "
        f"last id back as `Last-Event-ID` (or `?{events.LAST_EVENT_ID_PARAM}=`): every missed message follows once, "
        "in order; channels not in it start live. A stream that falls KEEL_WS_SEND_QUEUE events behind is ended "
        "and resumes the same way. Refusals come before the stream starts, as problem+json: 400 "
        "(`realtime.bad_stream_request`), 401, 403, 404 (`realtime.channel_not_found`), 429, 503.",
        "servers": [_ref("#/servers/http")],
        "messages": {
            "position": {
                "name": "position",
                "title": "Stream position",
                "summary": "Sent once, first: the reconnection delay and the stream's opening position.",
                "headers": _sse_fields(retry={"const": events.RETRY_MS}, id=_event_id(position)),
            },
            events.MESSAGE_EVENT: {
                "name": events.MESSAGE_EVENT,
                "title": "Message event",
                "summary": "A message in a followed channel; its `id` is the position right after it.",
                "headers": _sse_fields(event={"const": events.MESSAGE_EVENT}, id=_event_id(position)),
                "payload": _ref(SCHEMA.format(name=MessageRead.__name__)),
            },
        },
    }


def _sse_fields(**fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The event's SSE fields other than `data:`",
        "properties": fields,
        "required": list(fields),
        "additionalProperties": False,
    }


def _events_operation() -> dict[str, Any]:
    channel_id = {"type": "string", "format": "uuid"}
    return {
        "action": "send",
        "channel": _ref("#/channels/events"),
        "summary": "The stream of one or more channels.",
        "messages": [_ref(f"#/channels/events/messages/{name}") for name in ("position", events.MESSAGE_EVENT)],
        "bindings": {
            "http": {
                "method": "GET",
                "query": {
                    "type": "object",
                    "required": [events.CHANNEL_PARAM],
                    "properties": {
                        events.CHANNEL_PARAM: {
                            "type": "array",
                            "items": channel_id,
                            "minItems": 1,
                            "maxItems": events.MAX_CHANNELS,
                            "description": "A channel to follow; repeat the parameter for more.",
                        },
                        events.LAST_EVENT_ID_PARAM: _event_id(
                            "Where to resume, for clients that cannot send Last-Event-ID (the header wins)."
                        ),
                        tickets.QUERY_PARAM: {"type": "string", "description": "A ticket (see security)"},
                    },
                },
                "bindingVersion": "0.3.0",
            }
        },
    }
