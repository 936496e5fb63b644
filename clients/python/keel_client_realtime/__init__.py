"""Realtime for keel_client: `/ws` subscriptions and `/events` streams that reconnect and resume by themselves.

    async with Subscription(client, [channel_id]) as messages:
        async for event in messages:
            print(event.message.seq, event.message.body)

Hand-written, beside the generated `keel_client` (which `make clients-python` replaces whole).
"""

from keel_client_realtime.errors import Closed, RealtimeError, Refused, SubscribeFailed
from keel_client_realtime.frames import MessageEvent
from keel_client_realtime.retry import Backoff
from keel_client_realtime.sse import EventStream
from keel_client_realtime.websocket import Subscription

__all__ = [
    "Backoff",
    "Closed",
    "EventStream",
    "MessageEvent",
    "RealtimeError",
    "Refused",
    "SubscribeFailed",
    "Subscription",
]
