"""baseline: the empty schema every later migration builds on

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # stamps alembic_version, so `keel serve` can tell a migrated database from an empty one
    pass


def downgrade() -> None:
    pass
