"""64-bit message positions: channels.last_seq and messages.seq count forever

Revision ID: 0005_bigint_seq
Revises: 0004_canonical_names
Create Date: 2026-12-03

A busy channel would pass 2**31 - 1 messages, and a v2 cursor holding a larger integer made PostgreSQL fail the
query. SQLite's INTEGER is 64-bit already, so only PostgreSQL's columns change; the ALTER rewrites both tables
under an exclusive lock, which is cheap on a young deployment and is why it is done now.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_bigint_seq"
down_revision: str | None = "0004_canonical_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("channels", "last_seq", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
    op.alter_column("messages", "seq", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("messages", "seq", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
    op.alter_column("channels", "last_seq", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
