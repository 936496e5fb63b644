"""Mail text from the package's templates, and the RFC 5322 message built from it with the standard library."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from importlib.resources import files
from string import Template
from typing import Final

TEMPLATES: Final = files("keel.mail") / "templates"


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


@functools.cache  # read once per process: a request never waits for a file
def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(template: str, **values: str) -> Rendered:
    """`<template>.txt` (its first line is the subject) and `<template>.html`, with `$name`s filled in.

    Values are escaped for the HTML part; a missing value raises KeyError (a template and its caller disagree).
    """
    subject, _, text = _template(f"{template}.txt").partition("\n")
    page = _template(f"{template}.html")
    return Rendered(
        subject=Template(subject).substitute(values).strip(),
        text=Template(text).substitute(values).lstrip("\n"),
        html=Template(page).substitute({k: html.escape(v) for k, v in values.items()}),
    )


def build(
    *, sender: str, recipient: str, subject: str, text: str, page: str, message_id: str, date: datetime
) -> EmailMessage:
    """A multipart/alternative message: plain text first, HTML second (the part a reader prefers comes last)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    message.set_content(text)
    message.add_alternative(page, subtype="html")
    return message
