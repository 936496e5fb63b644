"""The idempotency service on its own: expiry, pruning, and two processes racing on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel import db
from keel.accounts import service as accounts
from keel.accounts.models import User
from keel.accounts.passwords import PasswordHasher
from keel.accounts.schemas import UserRead
from keel.idempotency import service
from keel.idempotency.errors import KeyInUse
from keel.idempotency.service import Claim, Idempotency, Outcome
from keel.identity.tokens import Keyring
from tests.conftest import Backend, empty_tables
from tests.factories import PASSWORD

SECRET = b"s" * 32


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = db.create_engine(backend.database_url)
    yield db.create_sessionmaker(engine)
    await engine.dispose()


def recording(session: AsyncSession, body: bytes, runs: list[bytes]) -> Callable[[Claim | None], Awaitable[str]]:
    async def work(claim: Claim | None) -> str:
        assert claim is not None
        runs.append(body)
        await claim.record(session, body)
        await session.commit()
        return "done"

    return work


async def test_an_expired_record_is_not_replayed_and_is_replaced(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    expiring, lasting = Idempotency(SECRET, ttl=timedelta(0)), Idempotency(SECRET)
    attempt = expiring.attempt(scope="user:1", operation="POST /x", key="k", request=b"{}")
    runs: list[bytes] = []
    async with sessions() as session:
        assert await expiring.run(session, attempt, recording(session, b"first", runs)) == "done"
        # expired at once: the key is free again, and this run's record replaces the old one
        assert await lasting.run(session, attempt, recording(session, b"second", runs)) == "done"
        replay = await lasting.run(session, attempt, recording(session, b"third", runs))
        assert replay == Outcome(201, b"second", {})
        assert runs == [b"first", b"second"]
        assert await service.count(session) == 1


async def test_expired_records_are_pruned_one_write_in_prune_every(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    expiring = Idempotency(SECRET, ttl=timedelta(0))
    pruning = Idempotency(SECRET, prune_every=3)
    runs: list[bytes] = []
    async with sessions() as session:
        for key in ("a", "b", "c"):
            attempt = expiring.attempt(scope="user:1", operation="POST /x", key=key, request=b"{}")
            await expiring.run(session, attempt, recording(session, b"old", runs))
        for key in ("d", "e"):
            attempt = pruning.attempt(scope="user:1", operation="POST /x", key=key, request=b"{}")
            await pruning.run(session, attempt, recording(session, b"new", runs))
        assert await service.count(session) == 5  # two writes: not yet
        attempt = pruning.attempt(scope="user:1", operation="POST /x", key="f", request=b"{}")
        await pruning.run(session, attempt, recording(session, b"new", runs))
        assert await service.count(session) == 3  # the third write pruned the three expired records
        assert await pruning.prune(session) == 0


async def test_a_twin_on_another_process_gets_in_use_then_the_replay(pg_url: str) -> None:
    # two Idempotency objects are two instances: nothing in process memory is shared, only PostgreSQL
    await empty_tables(pg_url)
    engine = db.create_engine(pg_url)
    sessions = db.create_sessionmaker(engine)
    one, two = Idempotency(SECRET), Idempotency(SECRET)
    attempt = one.attempt(scope="user:twin", operation="POST /x", key="race", request=b"{}")
    started, release = asyncio.Event(), asyncio.Event()
    try:
        async with sessions() as first_session, sessions() as twin_session:

            async def held(claim: Claim | None) -> str:
                assert claim is not None
                started.set()
                await release.wait()
                await claim.record(first_session, b"answer")
                await first_session.commit()
                return "done"

            first = asyncio.create_task(one.run(first_session, attempt, held))
            await started.wait()
            with pytest.raises(KeyInUse):
                await two.run(twin_session, attempt, recording(twin_session, b"twin", []))
            await twin_session.rollback()
            release.set()
            assert await first == "done"
            assert await two.run(twin_session, attempt, recording(twin_session, b"twin", [])) == Outcome(
                201, b"answer", {}
            )
    finally:
        await engine.dispose()


class GatedHasher(PasswordHasher):
    """Argon2 that waits at a gate: the moment a sign-up holds no transaction and no lock."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def hash(self, password: str) -> str:
        self.entered.set()
        await self.gate.wait()
        return await super().hash(password)


async def test_a_sign_up_twin_that_loses_the_race_answers_with_the_winners_record(pg_url: str) -> None:
    await empty_tables(pg_url)
    engine = db.create_engine(pg_url)
    sessions = db.create_sessionmaker(engine)
    one, two = Idempotency(SECRET), Idempotency(SECRET)  # two instances
    attempt = one.attempt(scope="ip:192.0.2.1", operation="POST /users", key="signup", request=b"the same body")
    hashers = [GatedHasher(), GatedHasher()]

    async def sign_up(instance: Idempotency, hasher: GatedHasher) -> bytes | Outcome:
        async with sessions() as session:

            async def work(claim: Claim | None) -> bytes:
                user = await accounts.register(
                    session, hasher, username="twin", email="twin@example.com", password=PASSWORD, idempotency=claim
                )
                return msgspec.json.encode(UserRead.from_model(user))

            return await instance.run(session, attempt, work)

    try:
        # both pass the name check, then wait in Argon2: neither holds the key's lock there
        first = asyncio.create_task(sign_up(one, hashers[0]))
        await hashers[0].entered.wait()
        twin = asyncio.create_task(sign_up(two, hashers[1]))
        await hashers[1].entered.wait()
        hashers[0].gate.set()
        created = await first
        assert isinstance(created, bytes)
        hashers[1].gate.set()
        assert await twin == Outcome(201, created, {})  # lost on the unique name, then found the winner's record
        async with sessions() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 1
    finally:
        for hasher in hashers:
            hasher.close()
        await engine.dispose()


def test_the_fingerprint_key_is_derived_from_the_signing_key_and_is_not_it() -> None:
    secret = b"k" * 32
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    makers: list[Callable[[], Keyring]] = [
        lambda: Keyring.hs256(secret, issuer="keel", audience="keel"),
        lambda: Keyring.eddsa(pem, [], issuer="keel", audience="keel"),
    ]
    for make in makers:
        one, another_instance = make(), make()
        key = one.derive_key("idempotency fingerprint")
        assert key == another_instance.derive_key("idempotency fingerprint")  # every instance fingerprints alike
        assert len(key) == 32
        assert key not in (secret, one.derive_key("another purpose"))
    assert Keyring.hs256(b"j" * 32, issuer="keel", audience="keel").derive_key("x") != Keyring.hs256(
        secret, issuer="keel", audience="keel"
    ).derive_key("x")
