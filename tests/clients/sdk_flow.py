"""What a user of the Python SDK does, run by tests/clients/test_python_sdk.py inside a fresh venv where only the
installed `keel-client` is importable (not keel, not the test suite).

Against server A (and B, another instance on the same database): sign up and log in (JSON and form), create a
channel, post, list with v1 and v2; follow the channel three ways (WebSocket with the header, WebSocket with a
ticket, SSE), have the test stop A, post while A is down (through B), have A started again on its port, post
once more, and print what each follower received. Then log out, and record how each follower ended.

Standard input and output carry the steps: the script prints `start-a`, `stop-a`, `start-a`, each time waiting
for the test's `done`, and prints its result as one JSON line at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from uuid import UUID, uuid4

from keel_client import AuthenticatedClient, Client
from keel_client.api.auth import auth_logout, auth_token, v1_auth_token
from keel_client.api.channels import (
    channels_create_channel,
    channels_list_messages,
    channels_post_message,
    v1_channels_list_messages,
    v1_channels_post_message,
)
from keel_client.api.users import users_register
from keel_client.models import (
    AuthTokenJsonBody,
    ChannelCreate,
    ChannelRead,
    MessageCreate,
    MessageRead,
    PageMessageRead,
    TokenPair,
    UserCreate,
    UserRead,
    V1AuthTokenDataBody,
)
from keel_client_realtime import Backoff, EventStream, MessageEvent, RealtimeError, Subscription

LAST = 6  # messages in all: 1-2 before the restart, 3-5 while A is down, 6 after
PASSWORD = "correct horse battery"


def step(name: str) -> None:
    """Tell the test to do `name` and wait until it has."""
    print(name, flush=True)
    assert sys.stdin.readline().strip() == "done", f"the test did not do {name}"


async def post(client: AuthenticatedClient, channel: UUID, body: str, *, v1: bool = False) -> int:
    endpoint = v1_channels_post_message if v1 else channels_post_message
    message = await endpoint.asyncio(channel, client=client, body=MessageCreate(body=body))
    assert isinstance(message, MessageRead), message
    return message.seq


def outcome(exc: RealtimeError) -> dict[str, Any]:
    return {"error": type(exc).__name__, "status": getattr(exc, "status", None), "code": getattr(exc, "code", None)}


async def refusal(messages: Subscription | EventStream) -> dict[str, Any]:
    """How `messages` fails at once, without a retry."""
    async with asyncio.timeout(10), messages:
        try:
            async for event in messages:
                raise AssertionError(f"expected a refusal, got {event}")
        except RealtimeError as exc:
            return outcome(exc)
    raise AssertionError("the iteration ended without a refusal")


class Followers:
    """Three followers of one channel, collecting the seq of every message each yields, then how it ended."""

    def __init__(self, followers: dict[str, Subscription | EventStream]) -> None:
        self.followers = followers
        self.seqs: dict[str, list[int]] = {name: [] for name in followers}
        self.ended: dict[str, dict[str, Any]] = {name: {} for name in followers}
        self.changed = asyncio.Event()
        self.tasks = [asyncio.create_task(self.follow(name)) for name in followers]

    async def follow(self, name: str) -> None:
        try:
            async for event in self.followers[name]:
                assert isinstance(event, MessageEvent)
                self.seqs[name].append(event.message.seq)
                self.changed.set()
        except RealtimeError as exc:
            self.ended[name] = outcome(exc)

    async def have(self, last: int) -> dict[str, list[int]]:
        """What each has received, once every one has received message `last`."""
        async with asyncio.timeout(60):
            while any(seqs[-1:] != [last] for seqs in self.seqs.values()):
                await self.changed.wait()
                self.changed.clear()
        return {name: list(seqs) for name, seqs in self.seqs.items()}


async def main(url_a: str, url_b: str) -> dict[str, Any]:
    step("start-a")
    anonymous = Client(url_a, raise_on_unexpected_status=True)
    user = await users_register.asyncio(
        client=anonymous, body=UserCreate(username="sdk_user", email="sdk@example.com", password=PASSWORD)
    )
    assert isinstance(user, UserRead), user
    by_form = await v1_auth_token.asyncio(
        client=anonymous, body=V1AuthTokenDataBody(username="sdk_user", password=PASSWORD)
    )
    tokens = await auth_token.asyncio(client=anonymous, body=AuthTokenJsonBody(username="sdk_user", password=PASSWORD))
    assert isinstance(by_form, TokenPair), by_form
    assert isinstance(tokens, TokenPair), tokens

    # a short first step: the test should not wait out long backoffs (the server's `retry:` still sets SSE's)
    backoff = Backoff(initial=0.2, maximum=2.0)
    async with (
        AuthenticatedClient(url_a, token=tokens.access_token, raise_on_unexpected_status=True) as client,
        AuthenticatedClient(url_b, token=tokens.access_token, raise_on_unexpected_status=True) as client_b,
    ):
        channel = await channels_create_channel.asyncio(client=client, body=ChannelCreate(name="sdk-flow"))
        assert isinstance(channel, ChannelRead), channel
        assert [await post(client, channel.id, "one", v1=True), await post(client, channel.id, "two")] == [1, 2]
        v1_list = await v1_channels_list_messages.asyncio(channel.id, client=client)
        v2_page = await channels_list_messages.asyncio(channel.id, client=client, limit=1)
        assert isinstance(v1_list, list), v1_list
        assert isinstance(v2_page, PageMessageRead), v2_page
        assert isinstance(v2_page.next_cursor, str)
        v2_rest = await channels_list_messages.asyncio(channel.id, client=client, cursor=v2_page.next_cursor)
        assert isinstance(v2_rest, PageMessageRead), v2_rest

        followers = Followers(
            {
                "ws": Subscription(client, [channel.id], since={channel.id: 0}, backoff=backoff),
                "ws_ticket": Subscription(
                    client, [channel.id], since={channel.id: 0}, use_ticket=True, backoff=backoff
                ),
                "sse": EventStream(client, [channel.id], last_event_id=f"{channel.id}:0", backoff=backoff),
            }
        )
        await followers.have(2)

        step("stop-a")
        missed = [await post(client_b, channel.id, f"while A is down {n}") for n in range(3)]
        step("start-a")
        live = await post(client, channel.id, "after the restart")
        received = await followers.have(LAST)
        refusals = {
            "ws_unknown_channel": await refusal(Subscription(client, [uuid4()])),
            "sse_unknown_channel": await refusal(EventStream(client, [uuid4()])),
            "ws_bad_token": await refusal(Subscription(AuthenticatedClient(url_a, token="not-a-jwt"), [channel.id])),
        }

        assert (await auth_logout.asyncio_detailed(client=client)).status_code == 204
        await asyncio.wait_for(asyncio.gather(*followers.tasks), 30)
        return {
            "v1_list": [m.seq for m in v1_list],
            "v2_pages": [[m.seq for m in v2_page.data], [m.seq for m in v2_rest.data], v2_rest.next_cursor],
            "posted_while_down": missed,
            "posted_live": live,
            "received": received,
            "refusals": refusals,
            "reconnects": {name: follower.reconnects for name, follower in followers.followers.items()},
            "ended": followers.ended,
            "after_end": {name: len(seqs) - len(received[name]) for name, seqs in followers.seqs.items()},
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))), flush=True)
