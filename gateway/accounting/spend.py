"""Settled spend read back from the ledger: only to rebuild budget counters Redis lost (never per request)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import asyncpg

from quota.types import Level

_TENANT = """
SELECT coalesce(sum(cost_usd), 0) FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
"""
_KEY = """
SELECT coalesce(sum(cost_usd), 0) FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 AND key_id = $4
"""
_MODEL = """
SELECT coalesce(sum(cost_usd), 0) FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 AND model = $4
"""


class LedgerSpend:
    """`quota.SpendSource` over `usage_records` (index on tenant and time; partitions pruned by the period)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def spent_usd(self, level: Level, start: dt.datetime, end: dt.datetime) -> Decimal:
        tenant = uuid.UUID(level.tenant_id)
        if level.scope == "key":
            value = await self._pool.fetchval(_KEY, tenant, start, end, uuid.UUID(level.scope_id))
        elif level.scope == "model":
            value = await self._pool.fetchval(_MODEL, tenant, start, end, level.scope_id)
        else:
            value = await self._pool.fetchval(_TENANT, tenant, start, end)
        return Decimal(value)
