"""What a WebSocket subscription and an event stream share: the async iterator and context manager they are, and
how they give up a connection and wait before the next."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Self

from keel_client import AuthenticatedClient
from keel_client_realtime.frames import MessageEvent
from keel_client_realtime.retry import Backoff

log = logging.getLogger("keel_client_realtime")


class Follower(ABC):
    """Iterate it (`async for event in follower`) inside `async with`; `close()` ends the iteration."""

    def __init__(self, client: AuthenticatedClient, *, use_ticket: bool, backoff: Backoff | None) -> None:
        self._client = client
        self._use_ticket = use_ticket
        self._backoff = backoff or Backoff()
        self._closed = False
        self._connected_before = False
        self.reconnects = 0  # connections opened after the first: a figure to log or export

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    @abstractmethod
    async def __anext__(self) -> MessageEvent: ...

    async def close(self) -> None:
        """Stop: close the connection and end the iteration."""
        self._closed = True
        await self._disconnect()

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close the current connection, if there is one."""

    def _connected(self) -> None:
        self.reconnects += self._connected_before
        self._connected_before = True

    async def _retry(self, reason: str, at_least: float = 0.0) -> None:
        """Give up this connection (unless the caller closed the follower) and wait before the next."""
        await self._disconnect()
        if self._closed:
            return
        delay = self._backoff.next_delay(at_least)
        log.warning("realtime: %s; reconnecting in %.1f s", reason, delay)
        await asyncio.sleep(delay)
