"""Budget holds in Postgres for when Redis is unreachable, and the end user in each usage record.

`budget_holds` is the fail-closed budget fallback of RELIABILITY §6.2: while Redis is away, a budgeted
admission takes an advisory lock on its level and period, checks the ledger's spend plus the open holds
against the budget, and inserts its hold in the same transaction. A hold lives until the request's usage
record is in the ledger (which then counts it) or until it expires. Only used during a Redis outage.

`usage_records.end_user` is the hashed `user` field (as in the Redis keys), so a per-end-user budget is
rebuilt from that user's records, not the whole tenant's.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_records ADD COLUMN end_user text")
    op.execute("""
        CREATE TABLE budget_holds (
            tenant_id uuid NOT NULL,
            scope text NOT NULL,
            scope_id text NOT NULL,
            period text NOT NULL,
            request_id uuid NOT NULL,
            amount_usd numeric(20, 10) NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (tenant_id, scope, scope_id, period, request_id)
        )
    """)
    op.execute("CREATE INDEX budget_holds_request_idx ON budget_holds (request_id)")


def downgrade() -> None:
    op.execute("DROP TABLE budget_holds")
    op.execute("ALTER TABLE usage_records DROP COLUMN end_user")
