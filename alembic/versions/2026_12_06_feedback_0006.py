"""Feedback on answers, and the routing features a confidence-routed request keeps for training.

`feedback`: a tenant's rating of one of its requests (`POST /v1/feedback`), the latest rating winning. It is
joined with `usage_records` on tenant and request id, so a rating of another tenant's id never matches anything.

`usage_records.routing_features`: for `cascade` and `scored` routes, the scorer's inputs computed from the prompt
(visible features and hashed word indices, msgpack; never text), so `sluice router train --from-feedback` can
learn from served traffic.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_records ADD COLUMN routing_features bytea")
    op.execute("""
        CREATE TABLE feedback (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            request_id uuid NOT NULL,
            rating text NOT NULL CHECK (rating IN ('good', 'bad')),
            comment text CHECK (length(comment) <= 2000),
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, request_id)
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE feedback")
    op.execute("ALTER TABLE usage_records DROP COLUMN routing_features")
