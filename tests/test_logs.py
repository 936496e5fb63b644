"""The log formats, the access log's line and the redaction every line passes through (SPEC §9)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from keel.logs import AccessLog, JsonFormatter, RedactSecrets, redact

FIELDS = [
    "ts", "level", "msg", "logger", "method", "route", "path", "status", "duration_ms", "request_id", "trace_id",
    "span_id", "user_id", "client_ip",
]  # fmt: skip


def a_request(log: AccessLog, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "method": "GET",
        "route": "/api/v1/channels/{channel_id}",
        "path": "/api/v1/channels/5d1b0a1e-0000-4000-8000-000000000000",
        "status": 200,
        "duration_ns": 12_345_600,
        "request_id": "abc",
        "user_id": "u-1",
        "client_ip": "203.0.113.7",
    }
    log.request(**{**fields, **overrides})


def test_an_access_line_has_every_field_of_spec_9_in_order() -> None:
    stream = io.BytesIO()
    log = AccessLog("json", stream)
    a_request(log, trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331")
    line = json.loads(stream.getvalue())
    assert list(line) == FIELDS
    assert line["ts"].endswith("Z")
    assert (line["level"], line["msg"], line["logger"]) == ("info", "request", "keel.access")
    assert line["route"] == "/api/v1/channels/{channel_id}"
    assert line["duration_ms"] == 12.346
    assert (line["trace_id"], line["span_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


def test_an_access_line_has_the_shape_of_an_application_line() -> None:
    stream = io.BytesIO()
    a_request(AccessLog("json", stream))
    access = json.loads(stream.getvalue())
    record = logging.makeLogRecord({"name": "keel.http", "levelname": "INFO", "msg": "hello"})
    application = json.loads(JsonFormatter().format(record))
    assert list(access)[:4] == list(application)[:4] == ["ts", "level", "msg", "logger"]
    assert len(access["ts"]) == len(application["ts"])


async def test_lines_of_one_loop_turn_leave_in_one_write() -> None:
    class Counting(io.BytesIO):
        writes = 0

        def write(self, data: bytes) -> int:  # type: ignore[override]
            Counting.writes += 1
            return super().write(data)

    stream = Counting()
    log = AccessLog("json", stream)
    for i in range(10):
        a_request(log, request_id=str(i))
    assert stream.getvalue() == b""  # nothing yet: the turn has not ended
    log.flush()
    assert Counting.writes == 1
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == [str(i) for i in range(10)]


def test_the_console_format_is_for_people() -> None:
    stream = io.BytesIO()
    a_request(AccessLog("console", stream))
    text = stream.getvalue().decode()
    assert "INFO    keel.access: GET /api/v1/channels/" in text
    assert " 200 12.346ms " in text


@pytest.mark.parametrize(("level", "on"), [("debug", True), ("info", True), ("warning", False), ("error", False)])
def test_the_access_log_is_off_above_info(level: str, on: bool) -> None:
    assert (AccessLog.configured("json", level) is not None) == on


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET /ws?ticket=t1ck3t&x=1 HTTP/1.1", "t1ck3t"),
        ("/events?channel=c&ticket=t1ck3t", "t1ck3t"),
        ("Authorization: Bearer s3cr3t.t0k3n", "s3cr3t.t0k3n"),
        ("headers=[(b'authorization', b'Bearer s3cr3t')]", "s3cr3t"),
        ('{"password": "two words", "username": "ada"}', "two words"),
        ("{'current_password': 'hunter2', 'new_password': 'hunter3'}", "hunter"),
        ('{\\"refresh_token\\": \\"r3fr3sh\\"}', "r3fr3sh"),
        ("grant_type=password&username=ada&password=hunter2", "hunter2"),
        ("cookie: keel_session=s3ss10n; keel_csrf=csrf", "s3ss10n"),
        ("Set-Cookie: keel_session=s3ss10n; HttpOnly", "s3ss10n"),
        ("keel_csrf=csrf; keel_refresh=r3fr3sh", "r3fr3sh"),
        ("Set-Cookie: keel_refresh=r3fr3sh; HttpOnly; SameSite=strict", "r3fr3sh"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl seen", "eyJzdWIiOiIxIn0"),
    ],
)
def test_redact_blanks_credentials(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert "[redacted" in redacted
    assert redact(redacted) == redacted


@pytest.mark.parametrize("text", ["Send one Authorization header, not several.", "GET /api/v1/channels 200", "ada"])
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_the_filter_redacts_a_records_message_extras_and_exception() -> None:
    try:
        raise ValueError("bad password=hunter2")
    except ValueError:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "%s", ("ticket=t1ck3t",), None)
        record.exc_info = __import__("sys").exc_info()
    record.query = "access_token=a55e55"
    assert RedactSecrets().filter(record)
    formatted = JsonFormatter().format(record)
    for secret in ("t1ck3t", "a55e55", "hunter2"):
        assert secret not in formatted


@pytest.mark.parametrize(
    ("duration_ns", "expected"),
    [(12_345_600, 12.346), (400, 0.0), (500, 0.001), (1_500_000_000, 1500.0), (100_000_000, 100.0)],
)
def test_the_duration_is_in_milliseconds_to_the_microsecond(duration_ns: int, expected: float) -> None:
    stream = io.BytesIO()
    AccessLog("json", stream).request(
        method="GET",
        route="/x",
        path="/x",
        status=200,
        duration_ns=duration_ns,
        request_id="r",
        user_id=None,
        client_ip="c",
    )
    assert json.loads(stream.getvalue())["duration_ms"] == expected
