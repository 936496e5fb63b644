"""Realtime's wire models: channels, messages and the v2 page envelope."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from keel.realtime.models import Channel
from keel.types import NO_NUL

ChannelName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9_-]+$(?!\n)",  # (?!\n): Python's $ would also match before a final "\n"
        description="1 to 64 of a-z 0-9 _ -",
        examples=["general"],
    ),
]


class ChannelCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: ChannelName
    description: Annotated[str, Meta(max_length=500, pattern=NO_NUL)] = ""


class ChannelRead(msgspec.Struct):
    id: uuid.UUID
    name: str
    description: str
    created_at: datetime
    last_seq: int

    @classmethod
    def from_model(cls, channel: Channel) -> ChannelRead:
        return cls(
            id=channel.id,
            name=channel.name,
            description=channel.description,
            created_at=channel.created_at,
            last_seq=channel.last_seq,
        )


#: A message's text, from REST and WebSocket alike.
MessageBody = Annotated[str, Meta(min_length=1, max_length=4000, pattern=NO_NUL, description="1 to 4000 characters")]


class MessageCreate(msgspec.Struct, forbid_unknown_fields=True):
    body: MessageBody


class Author(msgspec.Struct):
    id: uuid.UUID
    username: str


class MessageRead(msgspec.Struct):
    id: uuid.UUID
    channel_id: uuid.UUID
    seq: int
    author: Author
    body: str
    created_at: datetime


class TicketRead(msgspec.Struct):
    ticket: str
    expires_in: int  # seconds
