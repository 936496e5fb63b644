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


# examples for OpenAPI (SPEC §3): what a client sees, so a reader of the document knows the shapes at a glance
ChannelId = Annotated[uuid.UUID, Meta(examples=["6f1c2b8e-0c1a-4d4e-9b7a-2f0e4c1d9a33"])]
CreatedAt = Annotated[datetime, Meta(description="RFC 3339, UTC", examples=["2026-01-01T12:00:00Z"])]
Description = Annotated[str, Meta(examples=["Anything goes"])]


class ChannelCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: ChannelName
    description: Annotated[Description, Meta(max_length=500, pattern=NO_NUL)] = ""


class ChannelRead(msgspec.Struct):
    id: ChannelId
    name: Annotated[str, Meta(examples=["general"])]
    description: Description
    created_at: CreatedAt
    last_seq: Annotated[int, Meta(description="The seq of the latest message; 0 before the first", examples=[42])]

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
MessageBody = Annotated[
    str,
    Meta(min_length=1, max_length=4000, pattern=NO_NUL, description="1 to 4000 characters", examples=["hello"]),
]


class MessageCreate(msgspec.Struct, forbid_unknown_fields=True):
    body: MessageBody


class Author(msgspec.Struct):
    id: Annotated[uuid.UUID, Meta(examples=["0b6f3a52-8a0e-4d5b-9c1e-2f7d4a9e6c10"])]
    username: Annotated[str, Meta(examples=["ada_l"])]


class MessageRead(msgspec.Struct):
    id: Annotated[uuid.UUID, Meta(examples=["3d9b7c1e-5f2a-4e8b-a6c4-1b0d9e7f2a55"])]
    channel_id: ChannelId
    seq: Annotated[int, Meta(description="1, 2, 3 … per channel, with no gaps", examples=[42])]
    author: Author
    body: Annotated[str, Meta(examples=["hello"])]
    created_at: CreatedAt


class TicketRead(msgspec.Struct):
    ticket: Annotated[str, Meta(description="Single use", examples=["Vb1xQ8m2Lr0tYk5Hc3Nw7Pj9"])]
    expires_in: Annotated[int, Meta(description="Seconds the ticket stays valid", examples=[60])]
