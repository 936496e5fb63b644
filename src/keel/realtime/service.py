"""Channels and messages use cases. Framework-free; each write owns its commit."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

import msgspec
from opentelemetry.trace import Span, SpanKind
from sqlalchemy import Uuid, any_, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel import telemetry
from keel.accounts import service as accounts
from keel.db import utcnow
from keel.idempotency.service import Claim
from keel.realtime.errors import ChannelNameTaken, ChannelNotFound
from keel.realtime.models import Channel, Message
from keel.realtime.schemas import Author, ChannelRead, MessageRead
from keel.shared import BackendUnavailable
from keel.shared.broker import Broker
from keel.shared.cache import ReadCache

if TYPE_CHECKING:
    from sqlalchemy import Table

log = logging.getLogger("keel.realtime")
_encoder = msgspec.json.Encoder()

_CHANNELS: Final = cast("Table", Channel.__table__)
_MESSAGES: Final = cast("Table", Message.__table__)
# read-cache scopes: what one write changes. Every list shows every channel's last_seq, so a message changes both.
CHANNEL_LIST: Final = "channels"
# idempotency operations (SPEC §6): a WebSocket publish is the REST post of a message, whatever the API version
CREATE_CHANNEL: Final = "POST /channels"
POST_MESSAGE: Final = "POST /channels/{channel_id}/messages"


def channel_scope(channel_id: uuid.UUID) -> str:
    """The read-cache scope of a channel and its message pages."""
    return f"channel:{channel_id}"


def topic(channel_id: uuid.UUID) -> str:
    """The broker topic a channel's new messages are published on."""
    return f"keel.channel.{channel_id}"


def encode_message(message: MessageRead) -> bytes:
    """A message's JSON: what the broker carries and what WebSocket and SSE clients receive, byte for byte."""
    return _encoder.encode(message)


async def create_channel(
    session: AsyncSession,
    cache: ReadCache,
    *,
    name: str,
    description: str,
    created_by: uuid.UUID,
    idempotency: Claim | None = None,
) -> Channel:
    """Create a channel, or raise ChannelNameTaken; with an idempotency claim, its record commits with it."""
    channel = Channel(name=name, description=description, created_by=created_by, last_seq=0)
    session.add(channel)
    try:
        if idempotency is not None:
            await session.flush()  # the id and created_at the recorded answer holds
            await idempotency.record(session, _encoder.encode(ChannelRead.from_model(channel)))
        await session.commit()
    except IntegrityError as exc:  # the unique name settles concurrent creations
        raise ChannelNameTaken(f"A channel named {name!r} exists.") from exc
    await cache.invalidate(CHANNEL_LIST)
    return channel


async def get_channel(session: AsyncSession, channel_id: uuid.UUID) -> Channel:
    channel = await session.get(Channel, channel_id)
    if channel is None:
        raise ChannelNotFound(f"No channel {channel_id}.")
    return channel


async def list_channels(
    session: AsyncSession, *, limit: int, offset: int = 0, after: str | None = None
) -> Sequence[Channel]:
    """Channels by name in byte order (the name's collation makes it so on both backends)."""
    query = select(Channel).order_by(Channel.name).limit(limit).offset(offset)
    if after is not None:
        query = query.where(Channel.name > after)
    return (await session.scalars(query)).all()


@dataclass(frozen=True, slots=True)
class Draft:
    """A message to append: who wrote it, what it says, and the idempotency claim its record commits with."""

    author: Author
    body: str
    claim: Claim | None = None


async def append_messages(session: AsyncSession, channel_id: uuid.UUID, drafts: Sequence[Draft]) -> list[MessageRead]:
    """Append messages with the channel's next seqs, in order, in one transaction that commits them together with
    their idempotency records (keel.realtime.committer groups concurrent publishes so)."""
    # one statement reserves the next len(drafts) seqs and locks the channel row until commit, so concurrent writers
    # on any number of instances queue here and seq stays 1, 2, 3 ... with no gap (a rollback returns the numbers)
    # Core statements on the tables, not ORM ones: no identity map to synchronise and no ORM bulk layer (py-spy, WS
    # publishes without subscribers: the ORM's bulk UPDATE and INSERT paths were ~7 % of the server's samples)
    channels = _CHANNELS.c
    last = await session.scalar(
        update(_CHANNELS)
        .where(channels.id == channel_id)
        .values(last_seq=channels.last_seq + len(drafts))
        .returning(channels.last_seq)
    )
    if last is None:
        await session.rollback()
        raise ChannelNotFound(f"No channel {channel_id}.")
    # ids and time set here, not at flush: the recorded answers need them before the commit, at no extra round trip
    now = utcnow()
    first = last - len(drafts) + 1
    reads = [
        MessageRead(id=uuid.uuid4(), channel_id=channel_id, seq=first + i, author=d.author, body=d.body, created_at=now)
        for i, d in enumerate(drafts)
    ]
    rows = [
        {
            "id": r.id,
            "channel_id": channel_id,
            "seq": r.seq,
            "author_id": r.author.id,
            "body": r.body,
            "created_at": now,
        }
        for r in reads
    ]
    await session.execute(insert(_MESSAGES), rows)  # one multi-row INSERT (SQLAlchemy's insertmanyvalues)
    for draft, read in zip(drafts, reads, strict=True):
        if draft.claim is not None:
            await draft.claim.record(session, encode_message(read))
    await session.commit()
    return reads


async def broadcast(broker: Broker, cache: ReadCache, channel_id: uuid.UUID, messages: Sequence[MessageRead]) -> None:
    """Publish committed messages of one channel to live subscribers, in seq order, together: one broker publish
    (one Redis round trip) per batch, and each follower gets the batch in one write (keel.realtime.hub)."""
    if not messages:
        return
    # before the publish: a subscriber that reads the channel on seeing a message must not get a cached page
    await cache.invalidate(channel_scope(channel_id), CHANNEL_LIST)
    spans = [] if telemetry.tracer is None else [_publish_span(read) for read in messages]
    try:  # published only after the rows committed; live delivery is best effort, the database is the record
        if spans:
            # each message carries its span's traceparent, so every instance's fan-out joins its trace
            payloads = [telemetry.with_traceparent(encode_message(m), s) for m, s in zip(messages, spans, strict=True)]
        else:
            payloads = [encode_message(read) for read in messages]
        await broker.publish_many(topic(channel_id), payloads)
    except BackendUnavailable as exc:
        for span in spans:
            span.record_exception(exc)
        log.warning(
            "messages %s/%d-%d committed but not broadcast: broker unavailable",
            channel_id,
            messages[0].seq,
            messages[-1].seq,
        )
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
        raise
    finally:
        for span in spans:
            span.end()


def _publish_span(message: MessageRead) -> Span:
    span = telemetry.start_span("realtime.publish", kind=SpanKind.PRODUCER)
    span.set_attribute("messaging.destination.name", topic(message.channel_id))
    span.set_attribute("keel.realtime.seq", message.seq)
    return span


async def list_messages(
    session: AsyncSession, channel_id: uuid.UUID, *, limit: int, offset: int = 0, before_seq: int | None = None
) -> list[MessageRead]:
    """A channel's messages, newest first."""
    query = (
        select(Message, accounts.username_of(Message.author_id))
        .where(Message.channel_id == channel_id)
        .order_by(Message.seq.desc())
        .limit(limit)
        .offset(offset)
    )
    if before_seq is not None:
        query = query.where(Message.seq < before_seq)
    messages = [_read(m, username) for m, username in await session.execute(query)]
    if not messages:  # only an empty page needs the second query that tells "no such channel" from "no messages"
        await get_channel(session, channel_id)
    return messages


async def messages_after(
    session: AsyncSession, channel_id: uuid.UUID, *, after_seq: int, limit: int
) -> list[MessageRead]:
    """Up to `limit` of a channel's messages with seq > `after_seq`, oldest first: replay and gap filling."""
    query = (
        select(Message, accounts.username_of(Message.author_id))
        .where(Message.channel_id == channel_id, Message.seq > after_seq)
        .order_by(Message.seq)
        .limit(limit)
    )
    return [_read(m, username) for m, username in await session.execute(query)]


async def last_seqs(session: AsyncSession, channel_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The last_seq of each of these channels that exists, in one query (keel.realtime.watch)."""
    if session.get_bind().dialect.name == "postgresql":  # one statement text for any number of ids
        condition = Channel.id == any_(bindparam("ids", list(channel_ids), type_=ARRAY(Uuid)))
    else:
        condition = Channel.id.in_(channel_ids)
    rows = await session.execute(select(Channel.id, Channel.last_seq).where(condition))
    return {channel_id: last_seq for channel_id, last_seq in rows}


def _read(message: Message, username: str) -> MessageRead:
    return MessageRead(
        id=message.id,
        channel_id=message.channel_id,
        seq=message.seq,
        author=Author(message.author_id, username),
        body=message.body,
        created_at=message.created_at,
    )
