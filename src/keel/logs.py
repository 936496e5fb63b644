"""Logging: JSON lines (one object per line) or a console format for people; set up once at start.

Two paths share one shape. Application and library records go through `logging` (JsonFormatter, or the console
format). The access log, a line per request, skips `logging`: its fields are fixed, so AccessLog encodes them with
a precomputed msgspec encoder and writes the lines of one event-loop turn in one call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from typing import IO, Any, Final

import msgspec

_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()
_CREDENTIAL_KEYS: Final = (
    r"ticket|access_token|refresh_token|id_token|token|password|current_password|new_password|secret|client_secret"
    r"|keel_session|keel_refresh|keel_csrf|authorization|cookie|set-cookie"
)
# Credentials wherever they may show up in a message: a query string (uvicorn logs /ws?ticket=...), a form or JSON
# body echoed in an error, a header dump, a bearer token or a bare JWT. Order matters: the named ones first.
_SECRETS: Final = (
    # a quoted value, whole: "password": "two words"
    (re.compile(rf"(?i)\b({_CREDENTIAL_KEYS})(\\?[\"']?\s*[=:]\s*)(\\?[\"'])(.*?)(\3)"), r"\1\2\3[redacted]\5"),
    (
        re.compile(
            rf"(?i)\b({_CREDENTIAL_KEYS})(\\?[\"']?\s*[=:]\s*\\?[\"']?)(?!\[redacted)(?:bearer\s+)?[^&\s\"',;)\]}}\\]+"
        ),
        r"\1\2[redacted]",
    ),
    (re.compile(r"(?i)\bbearer\s+(?!\[redacted)[A-Za-z0-9._~+/=-]+"), "Bearer [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)


def redact(text: str) -> str:
    """`text` with every credential it holds blanked out."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Blank credentials out of every record, whoever logs it (uvicorn and libraries included): its message, its
    string extras and its exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in vars(record).items():
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """`ts, level, msg, logger` plus every `extra` member; exceptions as `exc` (server side only)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:  # the redaction filter left the redacted text in exc_text
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def chosen_format(log_format: str | None) -> str:
    """`KEEL_LOG_FORMAT`, or, unset, console on a TTY and JSON elsewhere."""
    return log_format or ("console" if sys.stderr.isatty() else "json")


def configure_logging(log_format: str | None, level: str) -> None:
    """Route keel's and the server's logs to stderr in one format. `None` picks console on a TTY, else JSON."""
    fmt = chosen_format(log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "granian", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # keel writes its own request log line (SPEC §9); the server's would be a second, poorer one, and with no
    # handler anywhere uvicorn skips formatting it altogether
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False


_wall_clock_ns: Final = time.time_ns
_MILLIS: Final = tuple(f".{millis:03d}Z" for millis in range(1000))  # a line's ts ending, without a format call


class _AccessLine(msgspec.Struct):
    """One request (SPEC §9), in the key order JsonFormatter writes a record's (ts, level, msg, logger, extras)."""

    ts: str
    level: str
    msg: str
    logger: str
    method: str
    route: str
    path: str
    status: int
    duration_ms: float
    request_id: str
    trace_id: str | None
    span_id: str | None
    user_id: str | None
    client_ip: str


class AccessLog:
    """A line per request and per WebSocket connection, on stderr, in the format of every other line.

    Cheap by construction: no LogRecord, no handler lookups, no formatter. A line's fields are kept as they come
    until the event loop's current turn ends; then the turn's lines are encoded by msgspec in one call (JSON) and
    leave in one write. Paths carry no query string and no header is logged, so nothing here can hold a credential.
    """

    LOGGER: Final = "keel.access"

    def __init__(self, log_format: str, stream: IO[bytes] | None = None) -> None:
        self._json = log_format == "json"
        self._stream = stream
        self._pending: list[Any] = []  # _AccessLine (JSON) or the console line's bytes
        self._second = -1
        self._stamp = ""

    @classmethod
    def configured(cls, log_format: str | None, level: str) -> AccessLog | None:
        """The access log for these settings; None (no work at all per request) when the level hides info."""
        return cls(chosen_format(log_format)) if level in ("debug", "info") else None

    def request(
        self,
        method: str,
        route: str,
        path: str,
        status: int,
        duration_ns: int,
        request_id: str,
        user_id: str | None,
        client_ip: str,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        # every request's: ~10 000 instructions, from ~16 000 with an f-string for the milliseconds, keywords and an
        # encode() call per line, and ~11 000 with float seconds (BENCHMARKS.md, 2026-12-05 05:00 and 14:00)
        millis = _wall_clock_ns() // 1_000_000  # integers: Python 3.11 has no fast path for float-int arithmetic
        second = millis // 1000
        if second != self._second:  # strftime once a second, not once a request
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = self._stamp + _MILLIS[millis % 1000]
        duration_ms = (duration_ns + 500) // 1000 / 1000  # to the µs
        if self._json:
            line: Any = _AccessLine(
                stamp, "info", "request", self.LOGGER, method, route, path, status, duration_ms, request_id, trace_id,
                span_id, user_id, client_ip,
            )  # fmt: skip
        else:
            line = (
                f"{stamp[:-1].replace('T', ' ').replace('.', ',')} INFO    {self.LOGGER}: {method} {path} {status} "
                f"{duration_ms}ms route={route} client={client_ip} user={user_id or '-'} id={request_id}\n"
            ).encode()
        self._pending.append(line)
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a direct call): write now
                self.flush()

    def flush(self) -> None:
        """Encode and write what is pending in one call."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        data = _encoder.encode_lines(pending) if self._json else b"".join(pending)
        if self._stream is not None:
            self._stream.write(data)
            self._stream.flush()
        else:
            os.write(sys.stderr.fileno(), data)
