"""The credentials a realtime connection presents, taken afresh from the client at every (re)connect, so a
token the application renews on `client.token` is the one used."""

from __future__ import annotations

import httpx

from keel_client import AuthenticatedClient
from keel_client.api.realtime import realtime_create_ticket
from keel_client.models import TicketRead
from keel_client_realtime.errors import Refused
from keel_client_realtime.retry import RETRY_STATUSES, Retryable, problem, retry_after


def authorization(client: AuthenticatedClient) -> dict[str, str]:
    """The bearer header, as the generated client sends it."""
    return {client.auth_header_name: f"{client.prefix} {client.token}" if client.prefix else client.token}


async def ticket(client: AuthenticatedClient) -> str:
    """A fresh single-use ticket (`POST /realtime/tickets`), for servers or proxies that drop the header."""
    try:
        response = await realtime_create_ticket.asyncio_detailed(client=client)
    except httpx.TransportError as exc:
        raise Retryable(f"ticket: {exc!r}") from exc
    if isinstance(response.parsed, TicketRead):
        return response.parsed.ticket
    if response.status_code in RETRY_STATUSES:
        raise Retryable(f"ticket: HTTP {response.status_code}", retry_after(response.headers))
    raise Refused(response.status_code, problem(response.content))
