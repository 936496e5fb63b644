"""Channels and messages over REST (SPEC §6). v1 and v2 share every endpoint but the lists' shape."""

from __future__ import annotations

import uuid
from typing import Final

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED
from sqlalchemy.ext.asyncio import AsyncSession

from keel.http.auth import SECURITY, USER, current_principal
from keel.http.caching import NOT_MODIFIED, VALIDATOR_HEADERS
from keel.http.deps import ConditionalReads, DbSession, SharedBackends
from keel.http.errors import problem_response
from keel.http.idempotency import IDEMPOTENT, Idempotent
from keel.http.pagination import Cursor, Limit, Offset, Page, decode_cursor, encode_cursor
from keel.idempotency.service import Claim
from keel.realtime import service, tickets
from keel.realtime.access import Realtime
from keel.realtime.schemas import (
    Author,
    ChannelCreate,
    ChannelName,
    ChannelRead,
    MessageCreate,
    MessageRead,
    TicketRead,
)
from keel.types import Position

NOT_FOUND = {404: problem_response("No such channel")}
# GETs answer with an ETag and 304 (SPEC §6); first pages and single channels, the hot reads, are also cached
READ = {**NOT_FOUND, **NOT_MODIFIED}


class ChannelsController(Controller):
    path = "/channels"
    tags = ["channels"]
    opt = USER
    security = SECURITY

    @post(
        summary="Create a channel",
        opt={IDEMPOTENT: service.CREATE_CHANNEL},
        responses={409: problem_response("The name is taken")},
    )
    async def create_channel(
        self, data: JSONBody[ChannelCreate], db_session: DbSession, backends: SharedBackends, idempotency: Idempotent
    ) -> Response[ChannelRead]:
        """Create a channel. Its name is unique; `description` is optional."""

        async def create(claim: Claim | None) -> ChannelRead:
            channel = await service.create_channel(
                db_session,
                backends.cache,
                name=data.name,
                description=data.description,
                created_by=current_principal().user_id,
                idempotency=claim,
            )
            return ChannelRead.from_model(channel)

        return await idempotency.run(db_session, create, data=data)

    @get("/{channel_id:str}", summary="Get a channel", responses=READ, response_headers=VALIDATOR_HEADERS)
    async def get_channel(self, channel_id: FromPath[uuid.UUID], reads: ConditionalReads) -> Response[ChannelRead]:
        """One channel, with the seq of its latest message (`last_seq`). Send its ETag in If-None-Match to get 304
        while it has not changed."""

        async def load(db_session: AsyncSession) -> ChannelRead:
            return ChannelRead.from_model(await service.get_channel(db_session, channel_id))

        return await reads.json(load, scope=service.channel_scope(channel_id), key="channel")

    @post(
        "/{channel_id:str}/messages",
        summary="Post a message",
        opt={IDEMPOTENT: service.POST_MESSAGE},
        responses=NOT_FOUND,
    )
    async def post_message(
        self,
        channel_id: FromPath[uuid.UUID],
        data: JSONBody[MessageCreate],
        idempotency: Idempotent,
        state: State,
    ) -> Response[MessageRead]:
        """Post a message; it gets the channel's next seq and goes live to every subscriber."""
        claims = current_principal()
        realtime: Realtime = state["realtime"]
        hub = realtime.hub

        async def post(claim: Claim | None) -> MessageRead:
            if claim is not None:
                await claim.hold()  # the batch's transaction records it; the claim's connection goes back
            draft = service.Draft(Author(claims.user_id, claims.username), data.body, claim)
            message = await realtime.committer.publish(channel_id, draft)
            hub.published(channel_id, message.seq)
            return message

        async with hub.publishing():  # a stopping server answers and delivers it first
            if idempotency.key is None:
                # nothing to guard, so no session: opening and closing one unused was ~5 % of a REST publish's CPU
                # (py-spy, bench/publishing.py on PostgreSQL)
                return Response(await post(None), status_code=HTTP_201_CREATED)
            # the session opened here, not asked of DI: the provider's generator and its cleanup cost more than this
            # context manager (py-spy, REST publishes without subscribers: with the task group Litestar ran two
            # dependencies in, before keel.http.deps.SequentialDependencies, ~11 % of the server's samples)
            async with hub.session() as session:
                return await idempotency.run(session, post, data=data, target=str(channel_id))


class ChannelListsV1(Controller):
    path = "/channels"
    tags = ["channels"]
    opt = USER
    security = SECURITY

    @get(summary="List channels", responses=NOT_MODIFIED, response_headers=VALIDATOR_HEADERS)
    async def list_channels(
        self,
        reads: ConditionalReads,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Response[list[ChannelRead]]:
        """Channels by name (byte order)."""

        async def load(db_session: AsyncSession) -> list[ChannelRead]:
            return [
                ChannelRead.from_model(c) for c in await service.list_channels(db_session, limit=limit, offset=offset)
            ]

        return await reads.json(load, scope=service.CHANNEL_LIST, key=f"v1 {limit}" if offset == 0 else None)

    @get(
        "/{channel_id:str}/messages",
        summary="List a channel's messages",
        responses=READ,
        response_headers=VALIDATOR_HEADERS,
    )
    async def list_messages(
        self,
        channel_id: FromPath[uuid.UUID],
        reads: ConditionalReads,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Response[list[MessageRead]]:
        """A channel's messages, newest first."""

        async def load(db_session: AsyncSession) -> list[MessageRead]:
            return await service.list_messages(db_session, channel_id, limit=limit, offset=offset)

        scope = service.channel_scope(channel_id)
        return await reads.json(load, scope=scope, key=f"v1 {limit}" if offset == 0 else None)


class ChannelListsV2(Controller):
    path = "/channels"
    tags = ["channels"]
    opt = USER
    security = SECURITY

    @get(summary="List channels", responses=NOT_MODIFIED, response_headers=VALIDATOR_HEADERS)
    async def list_channels(
        self,
        reads: ConditionalReads,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Response[Page[ChannelRead]]:
        """Channels by name (byte order), a page at a time."""
        after: str | None = decode_cursor(cursor, ChannelName) if cursor else None

        async def load(db_session: AsyncSession) -> Page[ChannelRead]:
            channels = await service.list_channels(db_session, limit=limit, after=after)
            more = len(channels) == limit
            return Page(
                [ChannelRead.from_model(c) for c in channels], encode_cursor(channels[-1].name) if more else None
            )

        return await reads.json(load, scope=service.CHANNEL_LIST, key=f"v2 {limit}" if cursor is None else None)

    @get(
        "/{channel_id:str}/messages",
        summary="List a channel's messages",
        responses=READ,
        response_headers=VALIDATOR_HEADERS,
    )
    async def list_messages(
        self,
        channel_id: FromPath[uuid.UUID],
        reads: ConditionalReads,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Response[Page[MessageRead]]:
        """A channel's messages, newest first, a page at a time."""
        before: int | None = decode_cursor(cursor, Position) if cursor else None

        async def load(db_session: AsyncSession) -> Page[MessageRead]:
            messages = await service.list_messages(db_session, channel_id, limit=limit, before_seq=before)
            more = len(messages) == limit and messages[-1].seq > 1
            return Page(messages, encode_cursor(messages[-1].seq) if more else None)

        scope = service.channel_scope(channel_id)
        return await reads.json(load, scope=scope, key=f"v2 {limit}" if cursor is None else None)


class TicketsController(Controller):
    path = "/realtime/tickets"
    tags = ["realtime"]
    opt = USER
    security = SECURITY

    @post(summary="Get a ticket for a realtime connection")
    async def create_ticket(self, backends: SharedBackends) -> TicketRead:
        """A single-use ticket for `/ws?ticket=` or `/events?ticket=` (browsers cannot send a header there)."""
        ticket = await tickets.issue(backends.kv, current_principal())
        return TicketRead(ticket, tickets.TICKET_TTL)


COMMON: Final[list[type[Controller]]] = [ChannelsController, TicketsController]
LISTS: Final[dict[str, list[type[Controller]]]] = {"v1": [ChannelListsV1], "v2": [ChannelListsV2]}
