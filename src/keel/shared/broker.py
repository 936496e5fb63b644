"""Pub/sub broker: realtime fan-out within one process, or across every instance through Redis.

Handlers are plain functions called on the event loop, one call per message and handler: fan-out to
thousands of sockets must not wake a task per socket (bench/SPIKES.md). A handler must not block; one that
raises is logged and the others still get the message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, Final, Protocol

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from keel import metrics
from keel.shared.errors import outage_as_unavailable

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]

# how long subscribe() waits for Redis to confirm a new subscription before returning anyway
SUBSCRIBE_TIMEOUT: Final = 2.0
# an idle pub/sub connection is PINGed this often; no reply by the next tick means it is dead, so even a
# silent network failure is noticed within 2 x IDLE_PING (SPEC §10 asks for recovery within 15 s)
IDLE_PING: Final = 5.0
RECONNECT_MIN_DELAY: Final = 0.05
RECONNECT_MAX_DELAY: Final = 1.0
CLOSE_RECANCEL: Final = 0.5  # seconds close() waits for the reader before cancelling it again


class Subscription:
    """One handler on one channel; close() stops its delivery."""

    __slots__ = ("_is_closed", "_release", "channel")

    def __init__(self, channel: str, release: Callable[[Subscription], Awaitable[None]]) -> None:
        self.channel = channel
        self._release = release
        self._is_closed = False

    async def close(self) -> None:
        """Stop delivery to this handler; closing again does nothing."""
        if self._is_closed:
            return
        self._is_closed = True
        await self._release(self)


class Broker(Protocol):
    """Publishes bytes to channels and delivers them to every handler subscribed to the channel."""

    async def publish(self, channel: str, data: bytes) -> None:
        """Send `data` to every subscriber of `channel` (on every instance, with Redis)."""
        ...

    async def publish_many(self, channel: str, messages: Sequence[bytes]) -> None:
        """Send each of `messages` to `channel`, in order, as `publish` would, but together: subscribers get them
        within one delivery (in-process) or one read (Redis: one pipelined round trip of PUBLISHes)."""
        ...

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Call `handler` with each message published to `channel` from now on."""
        ...

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the live feed comes back after an outage (messages may have been missed)."""
        ...

    async def close(self) -> None:
        """Drop every subscription and release connections."""
        ...


def _dispatch(channel: str, handlers: dict[Subscription, Handler] | None, data: bytes) -> None:
    if not handlers:
        return
    # a copy: a handler may close a subscription (through a task it starts) while we iterate
    for handler in tuple(handlers.values()):
        try:
            handler(data)
        except Exception:
            log.exception("broker handler failed", extra={"channel": channel})


class InProcessBroker:
    """Delivers within this process only: the embedded default, and what one worker needs."""

    def __init__(self) -> None:
        self._handlers: dict[str, dict[Subscription, Handler]] = {}

    async def publish(self, channel: str, data: bytes) -> None:
        """Deliver `data` to this process's subscribers of `channel` on the next loop iteration."""
        # not synchronously: like the Redis reader, delivery happens after publish() returns, so callers see
        # the same ordering on both backends
        asyncio.get_running_loop().call_soon(self._deliver, channel, data)

    async def publish_many(self, channel: str, messages: Sequence[bytes]) -> None:
        """Deliver `messages` in order to this process's subscribers of `channel`, all on the next loop iteration."""
        asyncio.get_running_loop().call_soon(self._deliver_many, channel, messages)

    def _deliver(self, channel: str, data: bytes) -> None:
        _dispatch(channel, self._handlers.get(channel), data)

    def _deliver_many(self, channel: str, messages: Sequence[bytes]) -> None:
        for data in messages:
            _dispatch(channel, self._handlers.get(channel), data)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Call `handler` with each message published to `channel` from now on."""
        subscription = Subscription(channel, self._release)
        self._handlers.setdefault(channel, {})[subscription] = handler
        return subscription

    async def _release(self, subscription: Subscription) -> None:
        handlers = self._handlers.get(subscription.channel)
        if handlers is not None:
            handlers.pop(subscription, None)
            if not handlers:
                del self._handlers[subscription.channel]

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Never called back: an in-process feed has no outages."""

    async def close(self) -> None:
        """Drop every subscription."""
        self._handlers.clear()


class RedisBroker:
    """Delivers across instances through Redis pub/sub.

    One pub/sub connection per instance and one Redis subscription per channel, however many local handlers
    it has; one reader task dispatches to them. When the connection drops, the reader reconnects with
    backoff, subscribes again to every channel in use, then calls the on_resume callbacks.
    """

    def __init__(self, redis: Redis, pubsub_pool: ConnectionPool) -> None:
        """Publish through `redis`; listen on a connection from `pubsub_pool` (keel.redis.create_pubsub_pool)."""
        self._redis = redis
        self._pool = pubsub_pool
        self._handlers: dict[str, dict[Subscription, Handler]] = {}
        self._pubsub: PubSub | None = None  # the live connection; None while (re)connecting
        self._sent: set[str] = set()  # channels SUBSCRIBEd on the live connection
        self._unconfirmed: Counter[str] = Counter()  # SUBSCRIBE replies still due, per channel
        self._waiters: dict[str, asyncio.Future[None]] = {}  # subscribe() calls waiting for a channel to go live
        # serialises SUBSCRIBE/UNSUBSCRIBE so `_sent` always matches what was sent, in order
        self._lock = asyncio.Lock()
        self._resume_callbacks: list[Callable[[], None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._is_down = False  # the last connection attempt failed or the connection was lost
        self._is_closed = False

    async def publish(self, channel: str, data: bytes) -> None:
        """Send `data` to `channel` on every instance; raises BackendUnavailable when Redis is down."""
        with outage_as_unavailable():
            await self._redis.publish(channel, data)

    async def publish_many(self, channel: str, messages: Sequence[bytes]) -> None:
        """Send `messages` to `channel` in order in one round trip; raises BackendUnavailable when Redis is down.

        Still one PUBLISH per message: what travels between instances is the same as `publish` sends, so instances
        of different versions interoperate during a rolling deploy. A subscriber's reader gets them back to back.
        """
        with outage_as_unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                for data in messages:
                    pipe.publish(channel, data)
                await pipe.execute()

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Call `handler` with each message published to `channel` from now on.

        Returns once Redis confirms the channel's subscription, so a message published after this returns is
        delivered. During an outage it returns at once: the on_resume callbacks cover the gap.
        """
        if self._is_closed:
            raise RuntimeError("broker is closed")
        subscription = Subscription(channel, self._release)
        self._handlers.setdefault(channel, {})[subscription] = handler
        if self._reader is None:
            self._reader = asyncio.create_task(self._run(), name="keel.broker.reader")
        if self._is_live(channel):
            return subscription
        waiter = self._waiters.get(channel)
        if waiter is None:
            waiter = self._waiters[channel] = asyncio.get_running_loop().create_future()
        try:
            await self._sync()
            if not self._is_down:
                await asyncio.wait([waiter], timeout=SUBSCRIBE_TIMEOUT)
        except BaseException:  # cancelled: the caller never gets the subscription, so close it here
            await subscription.close()
            raise
        return subscription

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the live feed comes back after an outage (messages may have been missed)."""
        self._resume_callbacks.append(callback)

    async def close(self) -> None:
        """Stop the reader, drop every subscription and close the pub/sub connection."""
        if self._is_closed:
            return
        self._is_closed = True
        if (reader := self._reader) is not None:
            # Cancelled again until it ends. A lifespan shutdown hung in Backends.close about once in 45 test runs,
            # and this was its one wait without a bound: one await of the reader after one cancel, so the cancel
            # was lost somewhere in the reader's redis-py calls (which path, not pinned down). A lost cancel now
            # costs CLOSE_RECANCEL seconds, not the shutdown.
            while not reader.done():
                reader.cancel()
                await asyncio.wait([reader], timeout=CLOSE_RECANCEL)
            with suppress(asyncio.CancelledError):
                await reader
        self._handlers.clear()
        self._resolve_waiters()
        await self._pool.aclose()

    def _is_live(self, channel: str) -> bool:
        return channel in self._sent and not self._unconfirmed[channel]

    async def _release(self, subscription: Subscription) -> None:
        handlers = self._handlers.get(subscription.channel)
        if handlers is None or handlers.pop(subscription, None) is None or handlers:
            return
        del self._handlers[subscription.channel]
        self._resolve_waiters(subscription.channel)
        await self._sync()

    async def _sync(self) -> None:
        """Bring the live connection's subscriptions in line with the channels that have handlers."""
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the reader subscribes to everything once it reconnects
            try:
                await self._sync_locked(pubsub)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                # the connection is broken: have the reader replace it (its next read fails or sees this)
                log.warning("broker subscription update failed: %s", exc)
                if self._pubsub is pubsub:
                    self._pubsub = None

    async def _sync_locked(self, pubsub: PubSub) -> None:
        added = [channel for channel in self._handlers if channel not in self._sent]
        removed = [channel for channel in self._sent if channel not in self._handlers]
        # bookkeeping first: the reader may read the reply before the send returns
        self._sent.difference_update(removed)
        self._sent.update(added)
        self._unconfirmed.update(added)
        if removed:
            await pubsub.unsubscribe(*removed)
        if added:
            await pubsub.subscribe(*added)

    async def _run(self) -> None:
        delay = RECONNECT_MIN_DELAY
        while not self._is_closed:
            pubsub = PubSub(self._pool)
            try:
                await self._connect(pubsub)
                delay = RECONNECT_MIN_DELAY
                await self._listen(pubsub)
            except (RedisConnectionError, RedisTimeoutError, TimeoutError) as exc:
                log.log(
                    logging.DEBUG if self._is_down else logging.WARNING,
                    "broker pub/sub connection to Redis failed; reconnecting: %s",
                    exc,
                )
            except Exception:
                # a bug must not end delivery for good: log it and start over on a fresh connection
                log.exception("broker reader failed, reconnecting")
            finally:
                self._disconnected()
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            # jitter, so instances don't reconnect in lockstep after a Redis restart
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _connect(self, pubsub: PubSub) -> None:
        async with self._lock:
            await pubsub.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            self._pubsub = pubsub
            await self._sync_locked(pubsub)
        # On a fresh connection Redis answers SUBSCRIBE before delivering anything on those channels, so once
        # every reply is in, the feed is live again and subscribers can fill the gap without missing more.
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
            while self._unconfirmed:
                self._handle(await pubsub.get_message(timeout=None))
        if self._is_down:
            log.info("broker connection to Redis restored")
            metrics.BROKER_RECONNECTS.inc()
            self._is_down = False
            for callback in tuple(self._resume_callbacks):
                try:
                    callback()
                except Exception:
                    log.exception("broker on_resume callback failed")

    async def _listen(self, pubsub: PubSub) -> None:
        is_pinged = False
        while self._pubsub is pubsub:
            frame = await pubsub.get_message(timeout=IDLE_PING)
            if frame is not None:
                is_pinged = False
                self._handle(frame)
            elif is_pinged:
                raise RedisTimeoutError(f"no reply to PING within {IDLE_PING} s")
            else:
                await pubsub.ping()
                is_pinged = True
        raise RedisConnectionError("subscription update failed on this connection")

    def _handle(self, frame: dict[str, Any] | None) -> None:
        if frame is None:
            return
        kind = frame["type"]
        if kind == "message":
            channel = frame["channel"].decode()
            _dispatch(channel, self._handlers.get(channel), frame["data"])
        elif kind == "subscribe":
            channel = frame["channel"].decode()
            self._unconfirmed[channel] -= 1
            if self._unconfirmed[channel] <= 0:
                del self._unconfirmed[channel]
            if self._is_live(channel):
                self._resolve_waiters(channel)

    def _disconnected(self) -> None:
        self._pubsub = None
        self._sent.clear()
        self._unconfirmed.clear()
        self._is_down = True
        self._resolve_waiters()  # their channels go live on reconnect, and on_resume covers the gap

    def _resolve_waiters(self, channel: str | None = None) -> None:
        waiters = [self._waiters.pop(channel, None)] if channel is not None else list(self._waiters.values())
        if channel is None:
            self._waiters.clear()
        for waiter in waiters:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
