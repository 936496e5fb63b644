"""Single-use tickets for /ws and /events: browsers cannot set an Authorization header on either (SPEC §7).

A ticket is an unguessable name for the claims of the access token that asked for it, kept in the shared TTL
store for TICKET_TTL seconds; redeeming takes it out in one atomic step, so it works once on any instance.
"""

from __future__ import annotations

import secrets
from typing import Final

import msgspec

from keel.identity.tokens import Claims
from keel.shared.kv import KeyValueStore

TICKET_TTL: Final = 60
QUERY_PARAM: Final = "ticket"  # /ws?ticket=… and /events?ticket=…
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Claims)


def _key(ticket: str) -> str:
    return f"ticket:{ticket}"


async def issue(kv: KeyValueStore, claims: Claims, ttl: float = TICKET_TTL) -> str:
    """A new ticket standing for `claims` for `ttl` seconds."""
    ticket = secrets.token_urlsafe(32)
    await kv.set(_key(ticket), _encoder.encode(claims), ttl)
    return ticket


async def redeem(kv: KeyValueStore, ticket: str) -> Claims | None:
    """The claims a live ticket stands for, once; None for an unknown, used or expired ticket."""
    if not ticket or len(ticket) > 128:  # never a key we issued: spare the store the lookup
        return None
    data = await kv.take(_key(ticket))
    return None if data is None else _decoder.decode(data)
