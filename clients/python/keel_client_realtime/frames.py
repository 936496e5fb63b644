"""The typed events a subscription yields, and the server frames of `/ws` (keel's SPEC §7) they come from.

Messages are the generated `keel_client.models.MessageRead`, the same type the REST calls return.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from keel_client.models import MessageRead


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A message posted to a followed channel."""

    channel: UUID
    message: MessageRead


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The server's answer to `subscribe`: the channel's last `seq` when it was followed."""

    channel: UUID
    last_seq: int


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """A frame the server could not serve; `ref` is the offending frame's own."""

    code: str
    detail: str
    ref: str | int | None


ServerFrame = MessageEvent | Subscribed | ErrorFrame


def decode(text: str | bytes) -> ServerFrame | None:
    """The frame in `text`; None for kinds a subscriber has no use for (`pong`, `unsubscribed`, `published`, and
    any kind a newer server adds)."""
    frame: dict[str, Any] = json.loads(text)
    kind = frame.get("type")
    if kind == "message":
        return MessageEvent(UUID(frame["channel"]), MessageRead.from_dict(frame["message"]))
    if kind == "subscribed":
        return Subscribed(UUID(frame["channel"]), int(frame["last_seq"]))
    if kind == "error":
        return ErrorFrame(str(frame["code"]), str(frame.get("detail", "")), frame.get("ref"))
    return None


def subscribe(channel: UUID, since: int | None) -> str:
    """A `subscribe` frame; `since` asks for every message after that seq first. The channel is its `ref`, so an
    error frame says which subscription failed."""
    frame: dict[str, Any] = {"type": "subscribe", "channel": str(channel), "ref": str(channel)}
    if since is not None:
        frame["since"] = since
    return json.dumps(frame)
