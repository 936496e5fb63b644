"""A real SMTP server for tests (aiosmtpd, in its own thread), plain, with STARTTLS and login, or implicit TLS,
with a self-signed certificate made here; and helpers that read what it received."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import free_port

USER, PASSWORD = "keel-mailer", "smtp-pass-word"
Security = Literal["plain", "starttls", "smtps"]


@dataclass(frozen=True)
class Certificate:
    pem: bytes
    key_pem: bytes

    def server_context(self, directory: Path) -> ssl.SSLContext:
        cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
        cert.write_bytes(self.pem)
        key.write_bytes(self.key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Trusts this certificate alone, hostname checks on: what a client of a real server does."""
        return ssl.create_default_context(cadata=self.pem.decode())


def self_signed() -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Certificate(cert.public_bytes(serialization.Encoding.PEM), key_pem)


@dataclass
class Inbox:
    """What the server accepted, in order, parsed; `sessions` counts the TLS state of each delivery."""

    messages: list[EmailMessage] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
            self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    async def wait_for(self, count: int, within: float = 10) -> list[EmailMessage]:
        deadline = time.monotonic() + within
        while self.count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.count()} mails arrived, expected {count}")
            await asyncio.sleep(0.02)
        with self.lock:
            return list(self.messages)


class SmtpServer:
    """aiosmtpd on a loopback port; `stop()` and `start()` again on the same port make an outage."""

    def __init__(self, security: Security = "plain", *, directory: Path | None = None, port: int | None = None):
        self.security = security
        self.port = port or free_port()
        self.inbox = Inbox()
        self.certificate = self_signed() if security != "plain" else None
        self._directory = directory
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        if self.security == "plain":
            return f"smtp://127.0.0.1:{self.port}"
        scheme = "smtps" if self.security == "smtps" else "smtp"
        return f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        if ok:
            self.inbox.logins.append(USER)
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        options: dict[str, Any] = {}
        if self.certificate is not None:
            assert self._directory is not None
            context = self.certificate.server_context(self._directory)
            if self.security == "starttls":
                options.update(tls_context=context, require_starttls=True, auth_require_tls=True, auth_required=True)
            else:  # TLS from the first byte: aiosmtpd's own TLS checks only know STARTTLS (the login is recorded)
                options.update(ssl_context=context, auth_require_tls=False)
            options.update(authenticator=self._authenticate)
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            if self.security != "plain":
                # a TLS connection's close finishes with a TLS shutdown on the server's loop; stopped before it
                # completes, the socket is left to the garbage collector (a ResourceWarning in a later test)
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), self._controller.loop).result()
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def token_in(message: EmailMessage, kind: str) -> str:
    """The token of a reset (`password-reset`) or verification (`verify-email`) mail, from its plain text link."""
    body = message.get_body(("plain",))
    assert body is not None
    match = re.search(rf"#{kind}=([A-Za-z0-9_-]+)", body.get_content())
    assert match is not None, body.get_content()
    return match.group(1)
