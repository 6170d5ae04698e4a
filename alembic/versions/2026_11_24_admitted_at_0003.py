"""Admission time on the Redis clock in each usage record, so window limits can be checked offline.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_records ADD COLUMN admitted_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE usage_records DROP COLUMN admitted_at")
