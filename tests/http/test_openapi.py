"""The OpenAPI document tells the truth (SPEC §3): it validates, every operation says what it answers, real requests
answer what it says, `keel openapi` writes what the server serves, and a generated client works from it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate

from keel.accounts.schemas import TokenRequest
from keel.main import create_app
from keel.settings import Settings
from tests.conftest import Backend, make_settings
from tests.factories import PASSWORD, bearer, log_in, make_channel, register
from tests.servers import keel_serve, run_keel

Client = AsyncTestClient[Litestar]
Document = dict[str, Any]
METHODS = ("get", "put", "post", "delete", "patch")
DOMAINS = {"auth", "users", "channels", "realtime", "ops"}
PROBLEM_SCHEMAS = {"ProblemDetails", "ValidationProblem", "NotReady"}
# RFC 6749 §3.2: a token endpoint ignores parameters it does not know, so these bodies allow unknown members
OAUTH2_BODIES = {"/auth/token", "/auth/session"}


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)  # the product's routes only: no test routes in the document


@pytest.fixture
async def document(client: Client) -> Document:
    response = await client.get("/api-docs/openapi.json")
    assert response.status_code == 200
    served: Document = response.json()
    return served


def operations(document: Document) -> list[tuple[str, str, Document]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def resolve(document: Document, node: Document) -> Document:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = document["components"][section][name]
    return node


def test_operations_cover_both_versions_and_the_event_stream(document: Document) -> None:
    validate(document)  # OpenAPI 3.1, schemas and references included
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    v1 = {path.removeprefix("/api/v1") for path in document["paths"] if path.startswith("/api/v1/")}
    v2 = {path.removeprefix("/api/v2") for path in document["paths"] if path.startswith("/api/v2/")}
    assert v1 == v2
    assert "/events" in document["paths"]
    assert "/ws" not in document["paths"]  # described by the AsyncAPI document


def test_every_operation_has_a_summary_a_description_and_one_domain_tag(document: Document) -> None:
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        summary = operation["summary"]
        assert " " in summary, where  # a phrase, not `ListUsers`
        assert summary[0].isupper(), where
        assert not summary.endswith("."), where
        assert len(operation["description"]) > len(summary), where
        (tag,) = operation["tags"]
        assert tag in DOMAINS, where


def test_every_error_is_problem_json_with_its_headers(document: Document) -> None:
    assert '"status_code"' not in json.dumps(document)  # Litestar's own 400 schema is gone
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            where = f"{method.upper()} {path} {status}"
            headers = response.get("headers", {})
            if int(status) < 400:
                if path.startswith("/api/"):
                    assert {"RateLimit", "RateLimit-Policy"} <= headers.keys(), where
                continue
            (media_type,) = response["content"]
            assert media_type == "application/problem+json", where
            schema = response["content"][media_type]["schema"]["$ref"].rsplit("/", 1)[-1]
            assert schema in PROBLEM_SCHEMAS, where
            assert (schema == "ValidationProblem") == (status == "422"), where
            expected = {
                "401": {"WWW-Authenticate"},
                "429": {"RateLimit", "RateLimit-Policy", "Retry-After"},
                "503": {"Retry-After"},
            }.get(status, set())
            assert expected <= headers.keys(), where
            assert response["description"], where
    errors = resolve(document, {"$ref": "#/components/schemas/ValidationProblem"})["properties"]["errors"]
    assert errors["items"]["required"] == ["loc", "msg"]


def test_statuses_follow_from_what_the_edge_does(document: Document) -> None:
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        statuses = operation["responses"].keys()
        assert "400" in statuses, where  # two Authorization headers, on every route
        protected = "401" in statuses and path != "/api/v2/auth/refresh" and path != "/api/v1/auth/refresh"
        if protected and operation.get("security"):
            schemes = {name for requirement in operation["security"] for name in requirement}
            assert {"BearerAuth", "SessionCookie"} <= schemes, where
            assert "503" in statuses, where  # a session cookie that cannot be renewed
            if method != "get":
                assert "403" in statuses, where  # X-CSRF-Token
        else:
            assert "security" not in operation, where
        if path.startswith("/api/"):
            assert "429" in statuses, where
        if "requestBody" in operation:
            assert {"413", "415", "422"} <= statuses, where
        if any(parameter["in"] == "query" for parameter in operation.get("parameters", [])):
            assert "422" in statuses, where
        if "304" in statuses:
            names = {parameter["name"] for parameter in operation["parameters"]}
            assert "If-None-Match" in names, where
            assert "ETag" in operation["responses"]["304"]["headers"], where
    assert "503" not in document["paths"]["/healthz"]["get"]["responses"]
    assert "429" not in document["paths"]["/readyz"]["get"]["responses"]  # operations endpoints are never limited


def test_the_keyed_writes_document_idempotency_key(document: Document) -> None:
    keyed = {
        (method, path)
        for method, path, operation in operations(document)
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", ()))
    }
    writes = ("/channels", "/channels/{channel_id}/messages", "/users")
    assert keyed == {("post", f"/api/{v}{path}") for v in ("v1", "v2") for path in writes}
    for method, path in keyed:
        operation = document["paths"][path][method]
        parameter = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
        assert (parameter["in"], parameter["required"]) == ("header", False)
        assert parameter["schema"]["maxLength"] == 255
        assert "http.idempotency_key_in_use" in operation["responses"]["409"]["description"]
        assert "http.idempotency_key_reused" in operation["responses"]["422"]["description"]
        assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]


def test_request_bodies_refuse_unknown_members_except_the_oauth2_form(document: Document) -> None:
    bodies = 0
    for method, path, operation in operations(document):
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            schema = resolve(document, content["schema"])
            if path.removeprefix("/api/v1").removeprefix("/api/v2") in OAUTH2_BODIES:
                assert "additionalProperties" not in schema, path
                continue
            assert media_type == "application/json", path
            assert schema["additionalProperties"] is False, f"{method.upper()} {path}"
            bodies += 1
    assert bodies >= 10


def test_schemas_carry_examples_that_match_them(document: Document) -> None:
    components = document["components"]
    # whole-document examples: a schema's own, or those of the responses that use it
    examples = {name: list(schema.get("examples", [])) for name, schema in components["schemas"].items()}
    for _, _, operation in operations(document):
        for response in operation["responses"].values():
            for media_type in response.get("content", {}).values():
                ref = media_type["schema"].get("$ref", "").rsplit("/", 1)[-1]
                examples.setdefault(ref, []).extend(e["value"] for e in media_type.get("examples", {}).values())
    for name, schema in components["schemas"].items():
        for member, rules in schema.get("properties", {}).items():
            if rules.get("type") in ("string", "integer", "boolean") and not {"const", "enum"} & rules.keys():
                assert rules.get("examples") or examples[name], f"{name}.{member}"
            for example in rules.get("examples", []):
                jsonschema.Draft202012Validator(rules).validate(example)
        for example in examples[name]:
            jsonschema.Draft202012Validator({**schema, "components": components}).validate(example)


def test_the_password_login_documents_both_of_its_bodies_as_token_request(document: Document) -> None:
    expected = msgspec.json.schema(TokenRequest)["$defs"]["TokenRequest"]
    for path in ("/api/v2/auth/token", "/api/v2/auth/session"):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert content.keys() == {"application/x-www-form-urlencoded", "application/json"}
        for media_type in content.values():
            schema = media_type["schema"]
            assert sorted(schema["required"]) == sorted(expected["required"])
            assert schema["properties"].keys() == expected["properties"].keys()
            for name, field in expected["properties"].items():
                for rule in ("minLength", "maxLength", "default"):
                    assert schema["properties"][name].get(rule) == field.get(rule), (name, rule)


def test_events_is_an_authenticated_event_stream(document: Document) -> None:
    operation = document["paths"]["/events"]["get"]
    assert operation["operationId"] == "realtime_events"
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    channel = next(parameter for parameter in operation["parameters"] if parameter["name"] == "channel")
    assert channel["required"] is True
    assert channel["schema"]["type"] == "array"
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"ticket", "last_event_id", "Last-Event-ID"} <= names
    schemes = {name for requirement in operation["security"] for name in requirement}
    assert {"BearerAuth", "SessionCookie", "RealtimeTicket"} <= schemes
    assert {"401", "403", "404", "422", "429", "503"} <= operation["responses"].keys()


class Contract:
    """Checks real responses against the document: the status is listed, and the body and headers are as said."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, response: httpx.Response, path: str) -> None:
        method = response.request.method.lower()
        operation = self.document["paths"][path][method]
        where = f"{method.upper()} {path} {response.status_code}: {response.text[:300]}"
        assert str(response.status_code) in operation["responses"], where
        documented = operation["responses"][str(response.status_code)]
        for header, spec in documented.get("headers", {}).items():
            if "$ref" in spec:
                spec = self.document["components"]["headers"][spec["$ref"].rpartition("/")[2]]
            if spec.get("required") is not False:  # Idempotent-Replayed, say, is on a replay only
                assert header in response.headers, f"{where} lacks {header}"
        if "content" in documented and response.status_code != 304:
            media_type = response.headers["content-type"].partition(";")[0]
            assert media_type in documented["content"], where
            schema = {**documented["content"][media_type]["schema"], "components": self.document["components"]}
            jsonschema.Draft202012Validator(schema).validate(response.json())
        self.seen.add((method, path, response.status_code))


@pytest.fixture
async def contract(document: Document) -> Contract:
    return Contract(document)


async def test_the_edge_answers_as_documented(client: Client, contract: Contract) -> None:
    check = contract.check
    users, me = "/api/v2/users", "/api/v2/users/me"
    ada = {"username": "ada", "email": "ada@example.com", "password": PASSWORD}
    check(await client.post(users, json=ada), users)
    check(await client.post(users, json=ada), users)  # 409
    check(await client.post(users, json={"username": "a", "email": "nope", "extra": 1}), users)  # 422
    check(await client.post(users, content=b"{", headers={"content-type": "application/json"}), users)  # 422
    check(await client.post(users, content=b"x", headers={"content-type": "text/plain"}), users)  # 415
    check(await client.post(users, json={**ada, "password": "x" * 5000}), users)  # 413
    check(await client.get(me), me)  # 401
    check(await client.get(me, headers={"Authorization": "Bearer nonsense"}), me)  # 401, invalid_token
    token = "/api/v2/auth/token"
    check(await client.post(token, data={"username": "ada", "password": "wrong password"}), token)  # 401
    check(await client.post(token, data={"username": "ada"}), token)  # 422
    auth = bearer(await log_in(client))
    check(await client.post(token, json={"username": "ada", "password": PASSWORD}), token)  # 200
    check(await client.get(me, headers=auth), me)  # 200
    check(await client.get(users, headers=auth), users)  # 403: not an admin
    channels = "/api/v2/channels"
    check(await client.get(channels, params={"limit": 0}, headers=auth), channels)  # 422
    check(await client.get(channels, params={"cursor": "!"}, headers=auth), channels)  # 422
    channel = await make_channel(client, auth, "general")
    check(await client.post(channels, json={"name": "general"}, headers=auth), channels)  # 409
    listed = await client.get(channels, headers=auth)
    check(listed, channels)  # 200
    check(await client.get(channels, headers={**auth, "If-None-Match": listed.headers["etag"]}), channels)  # 304
    one = "/api/v2/channels/{channel_id}"
    check(await client.get(f"/api/v2/channels/{channel['id']}", headers=auth), one)  # 200
    check(await client.get(f"/api/v2/channels/{uuid.uuid4()}", headers=auth), one)  # 404
    check(await client.get("/healthz"), "/healthz")
    check(await client.get("/readyz"), "/readyz")
    check(await client.get("/events", params={"channel": str(uuid.uuid4())}, headers=auth), "/events")  # 404
    check(await client.get("/events", params={"channel": "x"}, headers=auth), "/events")  # 422
    check(await client.get("/events", params={"channel": channel["id"]}), "/events")  # 401
    statuses = {status for _, _, status in contract.seen}
    assert {200, 201, 304, 401, 403, 404, 409, 413, 415, 422} <= statuses
    # a 405 belongs to no operation: the document describes it once, as a reusable response
    not_allowed = await client.delete("/api/v2/public")
    assert not_allowed.status_code == 405
    documented = contract.document["components"]["responses"]["MethodNotAllowed"]
    assert all(header in not_allowed.headers for header in documented["headers"])
    schema = {
        **documented["content"]["application/problem+json"]["schema"],
        "components": contract.document["components"],
    }
    jsonschema.Draft202012Validator(schema).validate(not_allowed.json())


async def test_a_session_cookie_without_csrf_token_gets_the_documented_403(client: Client, contract: Contract) -> None:
    await register(client)
    session = "/api/v2/auth/session"
    contract.check(await client.post(session, data={"username": "ada", "password": PASSWORD}), session)  # 204
    channels = "/api/v2/channels"
    refused = await client.post(channels, json={"name": "general"})
    assert refused.json()["code"] == "http.csrf_failed"
    contract.check(refused, channels)
    csrf = {"X-CSRF-Token": client.cookies["keel_csrf"]}
    contract.check(await client.post(channels, json={"name": "general"}, headers=csrf), channels)  # 201
    contract.check(await client.delete(session, headers=csrf), session)  # 204


@pytest.fixture
async def limited_client(backend: Backend) -> AsyncIterator[Client]:
    settings = make_settings(backend, KEEL_RATE_LIMIT="1/min burst 1", KEEL_AUTH_RATE_LIMIT="1/min burst 1")
    async with AsyncTestClient(app=create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


async def test_rate_limited_answers_are_documented(limited_client: Client, contract: Contract) -> None:
    public = "/api/v2/public"
    contract.check(await limited_client.get(public), public)  # 200, with RateLimit headers
    refused = await limited_client.get(public)
    assert refused.status_code == 429
    contract.check(refused, public)
    token = "/api/v2/auth/token"
    contract.check(await limited_client.post(token, data={"username": "ada", "password": "x"}), token)  # 429


async def test_an_unreachable_database_gets_the_documented_503(tmp_path: Path, contract: Contract) -> None:
    # a database that refuses every connection: requests that need it answer 503 with Retry-After
    settings = make_settings(Backend("embedded", "postgresql+asyncpg://keel@127.0.0.1:1/keel", None))
    async with AsyncTestClient(app=create_app(settings), base_url="http://127.0.0.1") as client:
        users = "/api/v2/users"
        response = await client.post(users, json={"username": "ada", "email": "ada@example.com", "password": PASSWORD})
        assert response.status_code == 503
        contract.check(response, users)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        contract.check(ready, "/readyz")


def test_keel_openapi_writes_what_the_server_serves(tmp_path: Path, document_file: Path) -> None:
    assert run_keel("migrate", env={}, cwd=tmp_path).returncode == 0
    with keel_serve({}, tmp_path) as server:
        served = httpx.get(f"{server.url}/api-docs/openapi.json")
        assert served.status_code == 200
        assert json.loads(document_file.read_text()) == served.json()
        # the test client joins repeated headers into one, so the 400 for two Authorization headers is checked here
        contract = Contract(served.json())
        twice = [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
        for path in ("/healthz", "/api/v2/users/me", "/api/v2/public"):
            refused = httpx.get(f"{server.url}{path}", headers=twice)
            assert refused.status_code == 400
            contract.check(refused, path)


def test_a_generated_python_client_imports_cleanly(tmp_path: Path, document_file: Path) -> None:
    bin_dir = Path(sys.executable).parent
    generated = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            *("generate", "--path", str(document_file), "--meta", "none"),
            *("--output-path", str(tmp_path / "keel_client")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout, generated.stdout  # every operation and schema made it into the client
    # every module imports: two request content types once made the login modules fail with NameError (`Unset`)
    imported = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert "keel_client.api.auth.auth_token" in imported.stdout


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, keel_client
for module in pkgutil.walk_packages(keel_client.__path__, "keel_client."):
    importlib.import_module(module.name)
    print(module.name)
"""


@pytest.fixture
def document_file(tmp_path: Path) -> Path:
    target = tmp_path / "openapi.json"
    result = run_keel("openapi", "-o", str(target), env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return target
