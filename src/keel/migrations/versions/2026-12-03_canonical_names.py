"""canonical names: usernames and emails unique up to Unicode case and form, the same on every backend

Revision ID: 0004_canonical_names
Revises: 0003_channels
Create Date: 2026-12-03

The unique indexes on lower(username) and lower(email) let `Äb@x.com` and `äb@x.com` both register on SQLite,
whose lower() folds ASCII only. They give way to users.username_key and users.email_key, computed in Python
(NFKC, case-folded) and uniquely indexed.
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision: str = "0004_canonical_names"
down_revision: str | None = "0003_channels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")
users = sa.table(
    "users",
    sa.column("id", sa.Uuid()),
    sa.column("username", sa.String()),
    sa.column("email", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("username_key", sa.String()),
    sa.column("email_key", sa.String()),
)
EMAIL_KEY_LENGTH = 320


# a copy of keel.accounts.names as of this revision: a migration keeps meaning what it meant when it was written
def _canonical(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _email_key(email: str) -> str:
    with contextlib.suppress(EmailNotValidError):  # else stored when the check was looser: keyed as it stands
        email = validate_email(email, check_deliverability=False).normalized
    return _canonical(email)


def upgrade() -> None:
    # Batch mode that never rebuilds the table on SQLite: only ADD COLUMN and CREATE/DROP INDEX. A rebuild drops
    # the old table, and with foreign_keys=ON (which cannot be switched off inside this transaction) that
    # DELETE would cascade to every refresh token and message. Hence NOT NULL with a '' default on the new
    # columns, which SQLite can add in place; PostgreSQL drops the default again below.
    op.drop_index("uq_users_lower_username", table_name="users")
    op.drop_index("uq_users_lower_email", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("username_key", sa.String(length=32), server_default="", nullable=False))
        batch.add_column(sa.Column("email_key", sa.String(length=EMAIL_KEY_LENGTH), server_default="", nullable=False))
    _backfill(op.get_bind())
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("users", "username_key", server_default=None)
        op.alter_column("users", "email_key", server_default=None)
    with op.batch_alter_table("users") as batch:
        batch.create_index("uq_users_username_key", ["username_key"], unique=True)
        batch.create_index("uq_users_email_key", ["email_key"], unique=True)


def _backfill(connection: sa.Connection) -> None:
    rows = connection.execute(
        sa.select(users.c.id, users.c.username, users.c.email).order_by(users.c.created_at, users.c.id)
    )
    keys: list[dict[str, object]] = []
    seen: set[str] = set()
    demoted: list[str] = []
    for user_id, username, email in rows:
        email_key = _email_key(email)
        if email_key in seen or len(email_key) > EMAIL_KEY_LENGTH:
            # an older account has this address once case and Unicode form are folded (lower() missed it):
            # the older one keeps it; this one gets a key no address can have, and logs in by username
            demoted.append(str(user_id))
            email_key = f"#{user_id}"
        seen.add(email_key)
        # usernames were ASCII and unique under lower() already: their keys cannot collide
        keys.append({"user_id": user_id, "new_username_key": _canonical(username), "new_email_key": email_key})
    if keys:
        connection.execute(
            users.update()
            .where(users.c.id == sa.bindparam("user_id"))
            .values(username_key=sa.bindparam("new_username_key"), email_key=sa.bindparam("new_email_key")),
            keys,
        )
    if demoted:
        log.warning(
            "users %s share their email with an older account up to case or Unicode form: they can log in by "
            "username only until their email changes",
            ", ".join(demoted),
        )


def downgrade() -> None:
    op.drop_index("uq_users_email_key", table_name="users")
    op.drop_index("uq_users_username_key", table_name="users")
    # plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35), not a batch rebuild: see upgrade()
    op.drop_column("users", "email_key")
    op.drop_column("users", "username_key")
    op.create_index("uq_users_lower_username", "users", [sa.literal_column("lower(username)")], unique=True)
    op.create_index("uq_users_lower_email", "users", [sa.literal_column("lower(email)")], unique=True)
