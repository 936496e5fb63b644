"""A steady load of REST message writes and WebSocket subscribers, recorded so a fault test can account for every
request and every frame afterwards (SPEC §10: no acknowledged message lost, no 201 for an uncommitted row).

Writers post numbered bodies to one channel; each request's outcome (status, problem code or transport error, time
taken) is kept. Subscribers hold a socket each, subscribe with `since` = the last seq they got (0 at first) and, when
the socket closes or cannot open, reconnect and resume. After the fault the writers stop, the subscribers read on to
the channel's last seq, and `check()` holds it all against the rows in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import pg_admin_dsn
from tests.servers import sign_up

PACE = 0.05  # seconds between one writer's requests: a steady load, not a saturating one, on a 2-core machine
REQUEST_TIMEOUT = 10.0  # twice what SPEC §10 allows an answer during an outage: a slower one is a hang
RECONNECT_PAUSE = 0.2


@dataclass(frozen=True)
class Outcome:
    body: str
    started: float  # monotonic
    elapsed: float
    status: int | None  # None: no HTTP answer (connection refused or reset, timeout)
    detail: str  # the problem's code, the transport error's name, or "" for a 201
    seq: int | None = None
    content_type: str = ""


@dataclass
class Subscriber:
    received: list[tuple[int, str]] = field(default_factory=list)  # (seq, body) in arrival order
    closes: list[str] = field(default_factory=list)  # why each socket ended or failed to open
    errors: list[dict[str, Any]] = field(default_factory=list)  # error frames
    subscribed: int = 0  # `subscribed` frames: one per socket that opened and subscribed

    @property
    def last(self) -> int:
        return self.received[-1][0] if self.received else 0


@dataclass
class Load:
    http_url: str
    auth: dict[str, str]
    channel: str
    writers: int = 3
    subscribers: int = 3
    churn: float | None = None  # if set, each subscriber drops its socket after this many seconds and resumes
    outcomes: list[Outcome] = field(default_factory=list)
    followers: list[Subscriber] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _target: int | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever a request ends or a frame arrives

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1) + "/ws"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Subscribers connected and writers writing for the body of the `async with`; on exit the writers stop."""
        self.followers = [Subscriber() for _ in range(self.subscribers)]
        readers = [asyncio.create_task(self._follow(s)) for s in self.followers]
        await self.until(lambda: all(s.subscribed for s in self.followers), 10)
        assert all(s.subscribed for s in self.followers), f"subscribers did not subscribe: {self.followers}"
        writers = [asyncio.create_task(self._write(w)) for w in range(self.writers)]
        self._readers = readers
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*writers)

    async def catch_up(self, last_seq: int, within: float) -> None:
        """Let every subscriber read on to `last_seq`, then close them all; fails after `within` seconds."""
        self._target = last_seq
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*self._readers)
        except TimeoutError:
            behind = [s.last for s in self.followers]
            raise AssertionError(f"subscribers at {behind} {within} s after the load, not at {last_seq}") from None
        finally:
            for task in self._readers:
                task.cancel()

    async def _write(self, writer: int) -> None:
        async with httpx.AsyncClient(base_url=self.http_url, headers=self.auth, timeout=REQUEST_TIMEOUT) as client:
            number = 0
            while not self._stop.is_set():
                number += 1
                self.outcomes.append(await self._post(client, f"w{writer}-{number}"))
                self._changed.set()
                await asyncio.sleep(PACE)

    async def _post(self, client: httpx.AsyncClient, body: str) -> Outcome:
        started = time.monotonic()
        try:
            response = await client.post(f"/api/v1/channels/{self.channel}/messages", json={"body": body})
        except httpx.TransportError as exc:
            return Outcome(body, started, time.monotonic() - started, None, type(exc).__name__)
        elapsed = time.monotonic() - started
        content_type = response.headers.get("content-type", "")
        if response.status_code == 201:
            return Outcome(body, started, elapsed, 201, "", response.json()["seq"], content_type)
        try:
            code = str(response.json().get("code"))
        except ValueError:
            code = f"not JSON: {response.text[:80]!r}"
        return Outcome(body, started, elapsed, response.status_code, code, None, content_type)

    async def _follow(self, subscriber: Subscriber) -> None:
        # staggered, so the subscribers of one instance are not all away at once
        lifetime = self.churn * (1 + 0.3 * self.followers.index(subscriber)) if self.churn else None
        while self._target is None or subscriber.last < self._target:
            try:
                async with connect(self.ws_url, additional_headers=self.auth, open_timeout=5, close_timeout=1) as ws:
                    frame = {"type": "subscribe", "channel": self.channel, "since": subscriber.last}
                    await ws.send(json.dumps(frame))
                    opened = time.monotonic()
                    while self._target is None or subscriber.last < self._target:
                        if lifetime is not None and time.monotonic() - opened > lifetime:
                            subscriber.closes.append("churned")
                            break
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        data = json.loads(raw)
                        self._changed.set()
                        if data["type"] == "message":
                            subscriber.received.append((data["message"]["seq"], data["message"]["body"]))
                        elif data["type"] == "subscribed":
                            subscriber.subscribed += 1
                        elif data["type"] == "error":
                            subscriber.errors.append(data)
            except ConnectionClosed as exc:
                subscriber.closes.append(f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}")
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                subscriber.closes.append(f"could not open: {type(exc).__name__}: {exc}")
            else:
                continue  # churned, or caught up: the loop's condition tells
            await asyncio.sleep(RECONNECT_PAUSE)

    async def until(self, check: Callable[[], object], within: float) -> bool:
        """Whether `check()` turned true within `within` seconds, asked again after every request and frame."""
        try:
            async with asyncio.timeout(within):
                while not check():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # what happened

    def acknowledged(self) -> dict[str, int]:
        return {o.body: o.seq for o in self.outcomes if o.status == 201 and o.seq is not None}

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 201]

    def first_201_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the answer of the first write sent after it that got 201."""
        done = [o.started + o.elapsed for o in self.outcomes if o.status == 201 and o.started >= moment]
        return min(done) - moment if done else None

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for outcome in self.outcomes:
            key = f"{outcome.status or 'no answer'} {outcome.detail}".strip()
            kinds[key] = kinds.get(key, 0) + 1
        closes = sorted({c for s in self.followers for c in s.closes})
        return f"writes {kinds}; socket ends {closes}"


def open_channel(url: str, name: str) -> tuple[dict[str, str], str]:
    """Sign a user up on `url` and create a channel: their bearer header and the channel's id."""
    auth = {"Authorization": f"Bearer {sign_up(url)['access_token']}"}
    response = httpx.post(f"{url}/api/v1/channels", json={"name": name}, headers=auth)
    assert response.status_code == 201, response.text
    channel: str = response.json()["id"]
    return auth, channel


async def stored_messages(database_url: str, channel: str) -> list[tuple[int, str]]:
    """The channel's (seq, body) rows, read straight from PostgreSQL, in seq order."""
    conn = await asyncpg.connect(pg_admin_dsn(database_url, urlsplit(database_url).path.lstrip("/")), timeout=5)
    try:
        rows = await conn.fetch("SELECT seq, body FROM messages WHERE channel_id = $1 ORDER BY seq", channel)
    finally:
        await conn.close()
    return [(row["seq"], row["body"]) for row in rows]


def check(load: Load, stored: list[tuple[int, str]]) -> None:
    """SPEC §10's accounting: every 201 is a row with its seq, every row was answered 201 or its request failed,
    seq is gapless, and every subscriber got every row once, in order."""
    seqs = [seq for seq, _ in stored]
    assert seqs == list(range(1, len(stored) + 1)), f"seq has gaps or duplicates: {seqs}"
    by_body = {body: seq for seq, body in stored}
    assert len(by_body) == len(stored), "a body was stored twice"
    acknowledged = load.acknowledged()
    lost = {body: seq for body, seq in acknowledged.items() if by_body.get(body) != seq}
    assert not lost, f"answered 201 but not stored as answered: {sorted(lost.items())[:10]}"
    failed = {o.body for o in load.failed()}
    unexplained = set(by_body) - set(acknowledged) - failed
    assert not unexplained, f"stored, never answered, never failed: {sorted(unexplained)[:10]}"
    check_deliveries(load, stored)


def check_deliveries(load: Load, stored: list[tuple[int, str]]) -> None:
    """Every subscriber got every stored message once, in seq order."""
    for number, subscriber in enumerate(load.followers):
        assert subscriber.received == stored, (
            f"subscriber {number} got {len(subscriber.received)} of {len(stored)} messages "
            f"(first difference at {_first_difference(subscriber.received, stored)}); closes {subscriber.closes}"
        )


def _first_difference(got: list[tuple[int, str]], expected: list[tuple[int, str]]) -> object:
    for index, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return {"index": index, "got": a, "expected": b}
    return {"index": min(len(got), len(expected))}
