"""Where messages go: an SMTP server (KEEL_SMTP_URL), or, in development without one, .eml files in a directory."""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from keel.db import utcnow

log = logging.getLogger("keel.mail")

SMTP_TIMEOUT = 20.0  # seconds for each step of a delivery; the outbox's lease is longer than a whole delivery


class Transport(Protocol):
    async def send(self, message: EmailMessage) -> None:
        """Deliver `message`, or raise (the outbox retries later)."""


class SmtpTransport:
    """`smtp://user:pass@host:587`: STARTTLS when the server offers it; `smtps://…`: TLS from the first byte."""

    def __init__(self, url: str, *, tls_context: ssl.SSLContext | None = None, timeout: float = SMTP_TIMEOUT) -> None:
        parts = urlsplit(url)
        self._implicit_tls = parts.scheme == "smtps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (465 if self._implicit_tls else 25)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._tls_context = tls_context  # None: the system's trust store, with hostname checks
        self._timeout = timeout

    async def send(self, message: EmailMessage) -> None:
        await aiosmtplib.send(
            message,
            hostname=self._host,
            port=self._port,
            username=self._username,
            password=self._password,
            use_tls=self._implicit_tls,
            start_tls=False if self._implicit_tls else None,  # None: upgrade when the server offers STARTTLS
            tls_context=self._tls_context,
            timeout=self._timeout,
        )


class DirectoryTransport:
    """Development without SMTP: each message becomes `<directory>/<time>-<id>.eml`, and one log line names it."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    async def send(self, message: EmailMessage) -> None:
        path = self._directory / f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.eml"
        await asyncio.to_thread(self._write, path, message.as_bytes())
        # the path only: the message holds a token, and no secret goes into a log line (SPEC §9)
        log.info("mail written to %s", path, extra={"path": str(path)})

    def _write(self, path: Path, data: bytes) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def transport_for(smtp_url: str | None, var_dir: Path) -> Transport:
    """KEEL_SMTP_URL's server, or, unset (development only: production refuses it), `<var_dir>/mail/`."""
    return SmtpTransport(smtp_url) if smtp_url is not None else DirectoryTransport(var_dir / "mail")
