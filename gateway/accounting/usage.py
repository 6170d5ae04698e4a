"""Read side of the ledger: a tenant's usage over a time range (admin and `/v1/usage`, never the hot path)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import asyncpg

from gateway.schema.admin import ModelUsage, UsageOut

_BY_MODEL = """
SELECT model, count(*) AS requests, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens, coalesce(sum(cost_usd), 0) AS cost_usd
FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY model ORDER BY model
"""


async def usage_summary(pool: asyncpg.Pool, tenant_id: str, since: dt.datetime, until: dt.datetime) -> UsageOut:
    rows = await pool.fetch(_BY_MODEL, uuid.UUID(tenant_id), since, until)
    by_model = [
        ModelUsage(
            model=row["model"],
            requests=row["requests"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cost_usd=row["cost_usd"],
        )
        for row in rows
    ]
    return UsageOut(
        tenant_id=tenant_id,
        since=since,
        until=until,
        requests=sum(m.requests for m in by_model),
        prompt_tokens=sum(m.prompt_tokens for m in by_model),
        completion_tokens=sum(m.completion_tokens for m in by_model),
        cost_usd=sum((m.cost_usd for m in by_model), Decimal(0)),
        by_model=by_model,
    )


def month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
