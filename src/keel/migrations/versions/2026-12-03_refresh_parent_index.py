"""Index refresh_tokens.parent_id: a retried refresh token's children are looked up on every retry

Revision ID: 0006_refresh_parent_index
Revises: 0005_bigint_seq
Create Date: 2026-12-03

KEEL_REFRESH_GRACE (SPEC §4) lets the token spent last in its family be presented again; whether it still is
the last spent is a lookup of its children, made under a row lock, which must not scan the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_refresh_parent_index"
down_revision: str | None = "0005_bigint_seq"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_refresh_tokens_parent_id"), "refresh_tokens", ["parent_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_refresh_tokens_parent_id"), table_name="refresh_tokens")
