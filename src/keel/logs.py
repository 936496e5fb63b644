"""Logging: JSON lines (one object per line) or a console format for people; set up once at start."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Final

import msgspec

_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()
# credentials that can ride in a query string (/ws?ticket=...): the server logs request lines with them
_SECRET_QUERY: Final = re.compile(r"\b(ticket|access_token|refresh_token|token)=[^&\s\"']+")


class RedactSecrets(logging.Filter):
    """Blank credentials out of every message, whoever logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_QUERY.sub(r"\1=[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
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
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def configure_logging(log_format: str | None, level: str) -> None:
    """Route keel's and the server's logs to stderr in one format. `None` picks console on a TTY, else JSON."""
    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
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
