"""The per-user cap on open streams (SPEC §5), on its own: counted, refused at the limit, released on exit."""

from __future__ import annotations

import json
import uuid

import pytest

from keel.realtime.access import Refused, StreamCounts


def test_a_user_holds_at_most_the_limit_and_a_closed_slot_frees_one() -> None:
    counts = StreamCounts(2)
    ada, bob = uuid.uuid4(), uuid.uuid4()
    first, second = counts.hold(ada), counts.hold(ada)
    with pytest.raises(Refused) as refusal:
        counts.hold(ada)
    assert refusal.value.status == 429
    assert json.loads(refusal.value.body)["code"] == "realtime.too_many_streams"
    assert (b"retry-after", b"5") in refusal.value.headers
    with counts.hold(bob):  # another user's streams are counted apart
        assert counts.held(bob) == 1
    assert counts.held(bob) == 0
    with first:
        pass
    assert counts.held(ada) == 1
    with counts.hold(ada), second:
        assert counts.held(ada) == 2
    assert counts.held(ada) == 0


def test_a_slot_is_released_once_when_its_block_raises() -> None:
    counts = StreamCounts(1)
    ada = uuid.uuid4()
    slot = counts.hold(ada)
    with pytest.raises(ConnectionResetError), slot:
        raise ConnectionResetError
    with slot:  # leaving it again releases nothing more
        pass
    assert counts.held(ada) == 0
    with counts.hold(ada):
        assert counts.held(ada) == 1
