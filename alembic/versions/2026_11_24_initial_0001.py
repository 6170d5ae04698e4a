"""Tenants, API keys, quotas and the time-partitioned usage ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE tenants (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE api_keys (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            prefix text NOT NULL UNIQUE,
            digest bytea NOT NULL,
            pepper_version integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            expires_at timestamptz
        )
    """)
    op.execute("CREATE INDEX api_keys_tenant_id_idx ON api_keys (tenant_id)")
    op.execute("""
        CREATE TABLE quotas (
            tenant_id uuid PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            rpm integer CHECK (rpm >= 0),
            tpm integer CHECK (tpm >= 0),
            budget_usd numeric(20, 9) CHECK (budget_usd >= 0),
            budget_period text NOT NULL DEFAULT 'month' CHECK (budget_period IN ('day', 'month')),
            max_concurrency integer CHECK (max_concurrency >= 0),
            weight integer NOT NULL DEFAULT 1 CHECK (weight >= 1),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # The ledger: append-only, partitioned by month, no foreign keys (a record outlives its tenant),
    # primary key on (request_id, created_at) so replays are idempotent with ON CONFLICT DO NOTHING.
    op.execute("""
        CREATE TABLE usage_records (
            request_id uuid NOT NULL,
            created_at timestamptz NOT NULL,
            tenant_id uuid NOT NULL,
            key_id uuid,
            model text NOT NULL,
            served_model text NOT NULL,
            deployment text NOT NULL,
            provider text NOT NULL,
            route text NOT NULL,
            stream boolean NOT NULL,
            prompt_tokens integer NOT NULL,
            completion_tokens integer NOT NULL,
            cached_tokens integer NOT NULL,
            cost_usd numeric(20, 10) NOT NULL,
            outcome text NOT NULL,
            truncated boolean NOT NULL,
            usage_source text NOT NULL,
            duration_ms integer NOT NULL,
            PRIMARY KEY (request_id, created_at)
        ) PARTITION BY RANGE (created_at)
    """)
    op.execute("CREATE INDEX usage_records_tenant_created_idx ON usage_records (tenant_id, created_at)")
    # Monthly partitions are made ahead of time by this function (called here and by the ledger
    # writer at start-up); retention drops whole partitions, never DELETEs rows.
    op.execute("""
        CREATE FUNCTION sluice_ensure_usage_partitions(first_month date, months integer)
        RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            m date;
            part text;
        BEGIN
            FOR i IN 0..months - 1 LOOP
                m := date_trunc('month', first_month)::date + make_interval(months => i);
                part := format('usage_records_y%sm%s', to_char(m, 'YYYY'), to_char(m, 'MM'));
                EXECUTE format(
                    'CREATE TABLE IF NOT EXISTS %I PARTITION OF usage_records FOR VALUES FROM (%L) TO (%L)',
                    part, m, m + interval '1 month');
            END LOOP;
        END $$
    """)
    op.execute("SELECT sluice_ensure_usage_partitions((now() AT TIME ZONE 'UTC')::date - 31, 4)")


def downgrade() -> None:
    op.execute("DROP TABLE usage_records")
    op.execute("DROP FUNCTION sluice_ensure_usage_partitions(date, integer)")
    op.execute("DROP TABLE quotas")
    op.execute("DROP TABLE api_keys")
    op.execute("DROP TABLE tenants")
