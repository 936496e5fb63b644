"""`/events` streams that resume with `Last-Event-ID` after every drop (keel's SPEC §8), as `EventSource` does.

Each event's id is the stream's position in every channel it follows (`<channel>:<seq>` pairs), so sending the
last one back resumes them all: the server replays every missed message, once, in order. Messages at or below
a channel's last yielded seq are dropped all the same, so each is yielded once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

import httpx

from keel_client import AuthenticatedClient
from keel_client.models import MessageRead
from keel_client_realtime.auth import authorization, ticket
from keel_client_realtime.errors import RealtimeError, Refused
from keel_client_realtime.follower import Follower
from keel_client_realtime.frames import MessageEvent
from keel_client_realtime.retry import RETRY_STATUSES, Backoff, Retryable, problem, retry_after

# keel sends a keep-alive comment every 15 s: three missed in a row means the connection is dead
READ_TIMEOUT: Final = 45.0


@dataclass
class Event:
    """One dispatched event of the text/event-stream format."""

    type: str
    data: str


@dataclass
class EventParser:
    """The text/event-stream parser of the HTML standard (§9.2.6), fed one line at a time."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    _type: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> Event | None:
        """The event an empty line dispatches; None otherwise."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if self._id is not None:
            self.last_event_id = self._id  # even without data: keel opens each stream with its position
        event = Event(self._type or "message", "\n".join(self._data)) if self._data else None
        self._type, self._data = "", []
        return event

    def interrupted(self) -> None:
        """The connection ended: an event not yet dispatched is discarded, as the standard says."""
        self._type, self._data, self._id = "", [], None


def positions(last_event_id: str | None) -> dict[UUID, int]:
    """The `<channel>:<seq>` pairs of a keel event id."""
    result: dict[UUID, int] = {}
    for pair in (last_event_id or "").split(","):
        channel, _, seq = pair.partition(":")
        if seq.isdigit():
            result[UUID(channel)] = int(seq)
    return result


class EventStream(Follower):
    """Messages of `channels` over Server-Sent Events, in order per channel, each once, across reconnects.

    `last_event_id` resumes a stream an earlier process followed (`stream.last_event_id` holds the position
    to keep). `use_ticket` authenticates with a fresh `?ticket=` per connection instead of the header. Iterate it
    (`async for event in stream`) inside `async with`; it raises `Refused` when the server says retrying cannot
    help (401 revoked credentials, 404 unknown channel, 422).
    """

    def __init__(
        self,
        client: AuthenticatedClient,
        channels: Iterable[UUID | str],
        *,
        last_event_id: str | None = None,
        use_ticket: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(client, use_ticket=use_ticket, backoff=backoff)
        self._channels = [str(channel) for channel in channels]
        self._parser = EventParser(last_event_id)
        self._seen = positions(last_event_id)
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._parser.last_event_id

    async def __anext__(self) -> MessageEvent:
        while not self._closed:
            try:
                lines = self._lines or await self._open()
                event = self._parser.feed(await anext(lines))
            except StopAsyncIteration:
                await self._retry("the server ended the stream")
            except httpx.TransportError as exc:
                await self._retry(f"connection lost ({exc!r})")
            except Retryable as exc:
                await self._retry(str(exc), exc.at_least)
            else:
                message = self._message(event)
                if message is not None:
                    return message
        raise StopAsyncIteration

    def _message(self, event: Event | None) -> MessageEvent | None:
        if event is None or event.type != "message":
            return None
        message = MessageRead.from_dict(json.loads(event.data))
        if message.seq <= self._seen.get(message.channel_id, 0):
            return None
        self._seen[message.channel_id] = message.seq
        return MessageEvent(message.channel_id, message)

    async def _open(self) -> AsyncIterator[str]:
        http = self._client.get_async_httpx_client()
        params: dict[str, str | list[str]] = {"channel": self._channels}
        headers = {"accept": "text/event-stream"}
        if self._use_ticket:
            params["ticket"] = await ticket(self._client)
        else:
            headers |= authorization(self._client)
        if self._parser.last_event_id is not None:
            headers["last-event-id"] = self._parser.last_event_id
        request = http.build_request(
            "GET", "/events", params=params, headers=headers, timeout=httpx.Timeout(10.0, read=READ_TIMEOUT)
        )
        try:
            response = await http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Retryable(f"could not connect ({exc!r})") from exc
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            if response.status_code in RETRY_STATUSES:
                raise Retryable(f"HTTP {response.status_code}", retry_after(response.headers))
            raise Refused(response.status_code, problem(body))
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise RealtimeError(f"/events answered {response.headers.get('content-type')!r}, not an event stream")
        self._connected()
        self._backoff.reset()
        self._response, self._lines = response, response.aiter_lines()
        return self._lines

    async def _disconnect(self) -> None:
        if self._response is not None:
            await self._response.aclose()
        self._response = self._lines = None
        self._parser.interrupted()

    async def _retry(self, reason: str, at_least: float = 0.0) -> None:
        if self._parser.retry_ms is not None:  # the server's `retry:` is the first step of the backoff
            self._backoff.initial = self._parser.retry_ms / 1000
        await super()._retry(reason, at_least)
