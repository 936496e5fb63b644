"""Names people type (usernames, email addresses): validated, normalised, and the keys that compare them.

Two accounts may not hold names that differ only in case or in Unicode presentation: `Äb@x.com` and
`äb@x.com`, `ab@x.com` and its full-width twin (U+FF41 U+FF42), `straße@x.com` and `STRASSE@x.com`. Every comparison
goes through `canonical`, computed here in Python and stored in uniquely indexed columns, so PostgreSQL and SQLite
agree (SQLite's lower() folds ASCII only, and PostgreSQL's depends on the database's locale).
"""

from __future__ import annotations

import unicodedata
from typing import Final

from email_validator import EmailNotValidError, validate_email

# the width of the users.email_key column: NFKC can expand a character many times over (U+FDFA is 18 letters),
# so an address whose key would not fit is refused rather than stored unkeyed
EMAIL_KEY_LENGTH: Final = 320


def canonical(name: str) -> str:
    """The key two names share when a person would read them as the same: NFKC, case-folded, NFKC again.

    That is Unicode's NFKC_Casefold, near enough (UAX #31 §5): full-width letters and ligatures fold to their
    plain forms, and `casefold` (not `lower`) makes `ß` and `ss` one.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def normalize_email(address: str) -> str:
    """`address` as email-validator normalises it (domain lower-cased and IDNA-checked, local part NFC).

    Raises ValueError with a sentence for a person when the syntax is wrong: two dots in a row, anything but an
    address (`<script>@x.com`), control or bidirectional-override characters, a quoted local part, an IP
    literal, a special-use domain (`.local`, `.test`). No DNS query is made.
    """
    if len(address) > EMAIL_KEY_LENGTH:  # before any parsing: the work is bounded by this, not by the body size
        raise ValueError("The email address is too long.")
    try:
        normalized = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    if len(canonical(normalized)) > EMAIL_KEY_LENGTH:
        raise ValueError("The email address is too long.")
    return normalized


def login_key(login: str) -> str:
    """The key a login is looked up by: an email's (normalised first) or a username's."""
    if "@" in login:
        try:
            return canonical(normalize_email(login))
        except ValueError:
            pass  # not an address we would have accepted: it matches nothing, like any unknown name
    return canonical(login)
