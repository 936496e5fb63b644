"""Contract fuzzing: schemathesis drives a live `keel serve` from its own OpenAPI document, on both backends.

Every operation gets examples generated from its schema, valid and invalid (examples, coverage and fuzzing phases),
judged by every check schemathesis has: no 5xx, documented statuses, content types, response schemas and headers,
valid data accepted and invalid data refused, Allow on OPTIONS and 405, auth that is not ignored. Then sequences of
calls linked by the ids they return (create a channel, post to it, list it), with the links schemathesis infers
from the schemas. The caller is a signed-in admin, so admin-only operations are exercised too.

Run them alone with `.venv/bin/pytest tests/http/test_contract.py` (add `-k embedded` for SQLite only).
"""

from __future__ import annotations

import asyncio
import re
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pytest
import schemathesis
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition
from requests.structures import CaseInsensitiveDict
from schemathesis import AuthContext, Case
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import positive_data_acceptance

from keel import cli
from tests.conftest import migrate
from tests.servers import clean_env, keel_serve, scaled_env

ADMIN: Final = {"username": "contract_admin", "email": "contract@example.com", "password": "contract-password-1"}
# examples per operation and phase: both backends together take about a minute and a half on two idle cores
EXAMPLES: Final = 10
# operations that end the caller's session; each of their cases signs in afresh, so the shared token outlives them
SESSION_ENDING: Final = ("/auth/logout", "/auth/session", "/users/me/password")
# `format: email` as the document describes it: schemathesis' own kind of address, but never on a special-use domain
# (RFC 6761: .test, .local …), which keel refuses because no mail could reach it, and its schema says so
_LABEL: Final = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)
EMAILS: Final = st.builds(
    "{}@{}.{}".format,
    st.text(alphabet=string.ascii_lowercase + string.digits + "!#$%&'*+-/=?^_`{|}~", min_size=1, max_size=10),
    _LABEL,
    st.sampled_from(["com", "org", "net", "io", "dev", "info", "example"]),
)
schemathesis.openapi.format("email", EMAILS)
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
VALID_KEY: Final = re.compile(r"[\x21-\x7e]{1,255}")
# a mailed token is 256 random bits: a schema-valid one is never a live one, so its documented 400 is the answer
TOKEN_SPENDING: Final = ("/auth/password-reset/confirm", "/auth/verify-email")
FUZZ_SETTINGS: Final = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@dataclass(frozen=True)
class LiveServer:
    url: str
    token: str


def sign_in(url: str) -> str:
    """A fresh access token for the admin: a session of its own."""
    credentials = {"username": ADMIN["username"], "password": ADMIN["password"]}
    response = httpx.post(f"{url}/api/v1/auth/token", data=credentials)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`keel serve` on a migrated database of either backend with an admin signed in; limits that never trip."""
    cwd = tmp_path_factory.mktemp(f"contract-{request.param}")
    env: dict[str, str | None]
    if request.param == "scaled":
        env = scaled_env(request.getfixturevalue("pg_url"), request.getfixturevalue("redis_url"))
    else:
        url = f"sqlite+aiosqlite:///{cwd / 'keel.db'}"
        asyncio.run(migrate(url))
        env = {"DATABASE_URL": url}
    # in this process: a `keel` subprocess costs seconds of imports on a loaded machine
    admin = ["create-admin", "--username", ADMIN["username"], "--email", ADMIN["email"]]
    created = CliRunner().invoke(cli.main, admin, env={**clean_env(env), "KEEL_ADMIN_PASSWORD": ADMIN["password"]})
    assert created.exit_code == 0, created.output
    with keel_serve(env, cwd) as server:
        yield LiveServer(server.url, sign_in(server.url))


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> BaseSchema:
    """The document the server serves, with every check schemathesis has."""
    config = schemathesis.Config.from_dict(
        {"checks": {"enabled": True}, "generation": {"max-examples": EXAMPLES, "database": "none"}}
    )
    schema = schemathesis.openapi.from_url(f"{live.url}/api-docs/openapi.json", config=config)

    class Bearer:
        def get(self, case: Case[Any], ctx: AuthContext) -> str:
            return sign_in(live.url) if case.operation.path.endswith(SESSION_ENDING) else live.token

        def set(self, case: Case[Any], data: str, ctx: AuthContext) -> None:
            headers = case.headers if case.headers is not None else CaseInsensitiveDict()
            headers["Authorization"] = f"Bearer {data}"
            case.headers = headers

    schema.auth(Bearer, refresh_interval=None)

    @schema.hook("map_headers")
    def new_request_new_key(ctx: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
        key = (headers or {}).get(IDEMPOTENCY_KEY)
        if headers is not None and isinstance(key, str) and VALID_KEY.fullmatch(key):
            # as a real client does: generated values repeat across cases, and a key reused with another body is 422
            # by SPEC §6 however valid the request (replays and reuse have tests of their own, in tests/idempotency)
            headers[IDEMPOTENCY_KEY] = f"{key[:200]}-{uuid.uuid4().hex}"
        return headers

    return schema


contract = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32 names each operation's subtest through `Node._nodeid`, which pytest 9.2 renamed
    request.node._nodeid = request.node.nodeid


# every operation in one test, 28-36 s on a quiet host with `make test`'s two workers: on a host three times slower
# (CI has met one) that passes pytest's 120 s guard against hangs
@pytest.mark.timeout(300)
@contract.parametrize()
@FUZZ_SETTINGS
def test_every_operation_keeps_the_contract(case: Case[Any]) -> None:
    spends_token = case.operation.path.endswith(TOKEN_SPENDING)
    case.call_and_validate(excluded_checks=[positive_data_acceptance] if spends_token else None)


# The server keeps what every earlier scenario wrote, so a sequence hypothesis replays can meet other answers (a
# username taken the second time, a generated id that exists by now), its rules another set of responses to draw
# from, and hypothesis stops with FlakyStrategyDefinition: its record of the draws no longer matches, no check
# failed. schemathesis' own runner treats it the same way (engine/run/stateful/_executor.py: a Flaky re-runs the
# stateful suite and fails it only for a check failure seen). A failed check is never retried, flaky or not
# (FlakyFailure is another class). Each run picks its links afresh (no example database): 40-80 s on the scaled
# backend, more under load, past pytest's 120 s guard against hangs.
STATEFUL_RUNS: Final = 3


@pytest.mark.timeout(STATEFUL_RUNS * 150)
def test_linked_operations_keep_the_contract(api_schema: BaseSchema) -> None:
    machine = api_schema.as_state_machine()
    for _ in range(STATEFUL_RUNS - 1):
        try:
            machine.run(settings=FUZZ_SETTINGS)
        except FlakyStrategyDefinition:
            continue
        return
    machine.run(settings=FUZZ_SETTINGS)
