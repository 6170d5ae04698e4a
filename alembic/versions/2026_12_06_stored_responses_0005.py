"""Stored Responses-API responses, tenant-scoped, for `previous_response_id`, `GET` and `DELETE`.

Each row keeps the conversation's input items up to and including its own turn (`input_items`) and the
response object, so a continuation reads one row. Both are JSON bytes (`bytea`, not `jsonb`: nothing queries
inside them, and `jsonb` refuses the `\u0000` a client may legitimately send). Rows expire (`expires_at`, the
retention setting) and are deleted in small batches by the gateway; `GET` never serves an expired row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE stored_responses (
            id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            input_items bytea NOT NULL,
            response bytea NOT NULL
        )
    """)
    op.execute("CREATE INDEX stored_responses_tenant_idx ON stored_responses (tenant_id, created_at)")
    op.execute("CREATE INDEX stored_responses_expiry_idx ON stored_responses (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE stored_responses")
