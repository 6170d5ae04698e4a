"""Read side of the ledger: a tenant's usage over a time range (admin and `/v1/usage`, never the hot path)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Literal

import asyncpg

from gateway.schema.admin import ModelUsage, QuotaRemaining, UsageGroup, UsageOut
from quota.limiter import Limiter
from quota.types import Level

_GROUPED = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, model, route, count(*) AS requests,
       sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, sum(cost_usd) AS cost_usd
FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


async def usage_summary(pool: asyncpg.Pool, tenant_id: str, since: dt.datetime, until: dt.datetime) -> UsageOut:
    rows = await pool.fetch(_GROUPED, uuid.UUID(tenant_id), since, until)
    groups = [
        UsageGroup(
            day=row["day"],
            model=row["model"],
            route=row["route"],
            requests=row["requests"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cost_usd=row["cost_usd"],
        )
        for row in rows
    ]
    per_model: dict[str, list[UsageGroup]] = {}
    for group in groups:
        per_model.setdefault(group.model, []).append(group)
    by_model = [
        ModelUsage(
            model=model,
            requests=sum(g.requests for g in items),
            prompt_tokens=sum(g.prompt_tokens for g in items),
            completion_tokens=sum(g.completion_tokens for g in items),
            cost_usd=sum((g.cost_usd for g in items), Decimal(0)),
        )
        for model, items in sorted(per_model.items())
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
        by_day_model_route=groups,
    )


async def quota_remaining(limiter: Limiter, levels: list[Level]) -> list[QuotaRemaining]:
    rows: list[QuotaRemaining] = []
    for level in levels:
        use = await limiter.usage(level)
        limits = level.limits
        mode: Literal["enforce", "shadow"] = "shadow" if limits.shadow else "enforce"
        window = f"{limits.window_s}s"
        found: list[tuple[Literal["rpm", "tpm", "budget", "concurrency"], Decimal | int | None, Decimal | int, str]] = [
            ("rpm", limits.rpm, use.requests, window),
            ("tpm", limits.tpm, use.tokens, window),
            ("budget", limits.budget_usd, use.spent_usd + use.reserved_usd, limits.budget_period),
            ("concurrency", limits.max_concurrency, use.inflight, "now"),
        ]
        for kind, limit, used, span in found:
            if limit is None:
                continue
            rows.append(
                QuotaRemaining(
                    scope=level.scope,
                    scope_id=level.scope_id,
                    kind=kind,
                    limit=Decimal(limit),
                    used=Decimal(used),
                    remaining=max(Decimal(0), Decimal(limit) - Decimal(used)),
                    mode=mode,
                    window=span,
                )
            )
    return rows


def month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
