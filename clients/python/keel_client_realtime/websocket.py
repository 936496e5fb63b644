"""`/ws` subscriptions that survive restarts, deploys and dropped connections (keel's SPEC §7).

After a connection ends for a reason worth retrying, the subscription connects again (backing off), subscribes
with `since` at the last `seq` it yielded for each channel, and the server replays what was missed, in order.
Messages at or below that position are dropped, so each is yielded once even if the server sends it twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final
from uuid import UUID

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from keel_client import AuthenticatedClient
from keel_client_realtime import frames
from keel_client_realtime.auth import authorization, ticket
from keel_client_realtime.errors import Closed, Refused, SubscribeFailed
from keel_client_realtime.follower import Follower
from keel_client_realtime.frames import ErrorFrame, MessageEvent, Subscribed
from keel_client_realtime.retry import RETRY_STATUSES, Backoff, Retryable, problem, retry_after

# Close codes after which connecting again cannot help: the client broke the protocol (1002, 1003, 1007, 1009,
# 1010), the server's policy refused it (1008), or an application code 4400-4499 (keel: 4000 + the HTTP status,
# 4401 for a revoked session). Every other ending (1001 shutdown, 1011, 1012 restart, 1013 too slow, a dropped
# connection with no close frame at all) is retried.
FATAL_CLOSE_CODES: Final = frozenset({1002, 1003, 1007, 1008, 1009, 1010})


def is_fatal(code: int) -> bool:
    return code in FATAL_CLOSE_CODES or 4400 <= code < 4500


class Subscription(Follower):
    """Messages of `channels` over one WebSocket, in order per channel, each once, across reconnects.

    `since` maps channels to the seq to resume after (every later message is replayed first); a channel without
    one starts live. `use_ticket` authenticates with a fresh `?ticket=` per connection instead of the header.
    Iterate it (`async for event in subscription`) inside `async with`; it raises `Refused`, `Closed` or
    `SubscribeFailed` when the server says retrying cannot help.
    """

    def __init__(
        self,
        client: AuthenticatedClient,
        channels: Iterable[UUID | str],
        *,
        since: Mapping[UUID | str, int] | None = None,
        use_ticket: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(client, use_ticket=use_ticket, backoff=backoff)
        resume = {UUID(str(channel)): seq for channel, seq in (since or {}).items()}
        # the last seq yielded (or the position subscribed at) per channel: where a reconnect resumes
        self.positions: dict[UUID, int | None] = {UUID(str(c)): None for c in channels} | resume
        self._socket: ClientConnection | None = None
        self._unconfirmed: set[UUID] = set()

    async def __anext__(self) -> MessageEvent:
        while not self._closed:
            try:
                socket = self._socket or await self._open()
                event = self._receive(frames.decode(await socket.recv()))
            except ConnectionClosed as exc:
                self._socket = None
                if exc.rcvd is not None and is_fatal(exc.rcvd.code):
                    raise Closed(exc.rcvd.code, exc.rcvd.reason) from exc
                await self._retry(f"connection lost ({exc})")
            except Retryable as exc:
                await self._retry(str(exc), exc.at_least)
            else:
                if event is not None:
                    return event
        raise StopAsyncIteration

    async def _open(self) -> ClientConnection:
        """Connect, and subscribe to every channel at its position."""
        self._socket = socket = await self._connect()
        self._connected()
        self._unconfirmed = set(self.positions)
        for channel, seq in self.positions.items():
            await socket.send(frames.subscribe(channel, seq))
        return socket

    async def _connect(self) -> ClientConnection:
        base = self._client.get_async_httpx_client().base_url
        url = base.copy_with(scheme="wss" if base.scheme == "https" else "ws", path=base.path.rstrip("/") + "/ws")
        headers: dict[str, str] = {}
        if self._use_ticket:
            url = url.copy_add_param("ticket", await ticket(self._client))
        else:
            headers = authorization(self._client)
        try:
            return await connect(str(url), additional_headers=headers)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status not in RETRY_STATUSES:
                raise Refused(status, problem(exc.response.body or b"")) from exc
            raise Retryable(f"HTTP {status}", retry_after(exc.response.headers)) from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise Retryable(repr(exc)) from exc

    def _receive(self, frame: frames.ServerFrame | None) -> MessageEvent | None:
        """Track positions; the message to yield, if this frame is one not yielded before."""
        if isinstance(frame, MessageEvent):
            position = self.positions.get(frame.channel)
            if frame.channel not in self.positions or (position is not None and frame.message.seq <= position):
                return None
            self.positions[frame.channel] = frame.message.seq
            return frame
        if isinstance(frame, Subscribed):
            if self.positions.get(frame.channel, 0) is None:  # started live: resume from here on
                self.positions[frame.channel] = frame.last_seq
            self._unconfirmed.discard(frame.channel)
            if not self._unconfirmed:
                self._backoff.reset()  # a connection that works: the next failure starts the backoff afresh
        elif isinstance(frame, ErrorFrame):
            if frame.code == "rate_limited":
                raise Retryable("subscribe was rate limited")
            raise SubscribeFailed(frame.code, frame.detail)
        return None

    async def _disconnect(self) -> None:
        if self._socket is not None:
            await self._socket.close()  # 1000
            self._socket = None
