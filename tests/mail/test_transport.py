"""Mail leaves keel through a real SMTP server (plain, STARTTLS with login, implicit TLS), or, in development
without one, as .eml files; the message is a proper multipart/alternative with the headers mail needs."""

from __future__ import annotations

import email
import email.policy
import gc
import logging
from collections.abc import Iterator
from email.utils import make_msgid, parsedate_to_datetime
from pathlib import Path

import pytest

from keel.db import utcnow
from keel.mail.message import build, render
from keel.mail.transport import DirectoryTransport, SmtpTransport
from tests.mail.smtp import USER, Security, SmtpServer


def message(recipient: str = "ada@example.com") -> email.message.EmailMessage:
    mail = render(
        "password_reset", public_url="https://keel.example.com", email=recipient, username="ada<b>", token="T0k3n"
    )
    return build(
        sender="keel <keel@example.com>",
        recipient=recipient,
        subject=mail.subject,
        text=mail.text,
        page=mail.html,
        message_id=make_msgid(domain="example.com"),
        date=utcnow(),
    )


@pytest.fixture(params=["plain", "starttls", "smtps"])
def smtp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SmtpServer]:
    security: Security = request.param
    with SmtpServer(security, directory=tmp_path) as server:
        yield server


async def test_a_message_goes_through_smtp_with_the_security_the_url_asks_for(smtp: SmtpServer) -> None:
    context = smtp.certificate.client_context() if smtp.certificate else None
    sent = message()
    await SmtpTransport(smtp.url, tls_context=context).send(sent)
    [received] = await smtp.inbox.wait_for(1)
    assert smtp.inbox.tls == [smtp.security != "plain"]  # STARTTLS was offered, so it was used
    assert smtp.inbox.logins == ([] if smtp.security == "plain" else [USER])
    assert received["Message-ID"] == sent["Message-ID"]
    assert received["From"] == "keel <keel@example.com>"
    assert received["Subject"] == "Reset your keel password"
    assert abs((parsedate_to_datetime(received["Date"]) - utcnow()).total_seconds()) < 60
    assert received.get_content_type() == "multipart/alternative"
    plain, page = received.get_body(("plain",)), received.get_body(("html",))
    assert plain is not None
    assert page is not None
    assert "https://keel.example.com/examples/chat#password-reset=T0k3n" in plain.get_content()
    assert "Hello ada<b>," in plain.get_content()
    assert "Hello ada&lt;b&gt;," in page.get_content()  # values are escaped in the HTML part


# A handshake that fails leaves a socket transport (aiosmtplib's or aiosmtpd's) to the garbage collector: collected
# here, so its ResourceWarning is this test's, and expected, instead of landing in whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_server_whose_certificate_is_not_trusted_gets_nothing(tmp_path: Path) -> None:
    with SmtpServer("starttls", directory=tmp_path) as smtp:
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await SmtpTransport(smtp.url).send(message())  # the system's trust store: the self-signed cert fails
        assert smtp.inbox.count() == 0
    gc.collect()


async def test_development_writes_each_mail_to_a_file_and_logs_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keel.mail")
    sent = message()
    await DirectoryTransport(tmp_path / "var" / "mail").send(sent)
    [path] = (tmp_path / "var" / "mail").glob("*.eml")
    stored = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert stored["Message-ID"] == sent["Message-ID"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "keel.mail"]
    assert str(path) in line
    assert "T0k3n" not in line
