"""Spend read back from Postgres: only to rebuild budget counters Redis lost (never per request).

What the ledger holds, plus the budget holds taken in Postgres while Redis was away whose usage records
have not reached the ledger yet (`budget_holds.py`): a counter rebuilt right after an outage must not
forget the requests still in flight through that fallback. Each such hold is reported with its amount, so
that when its record lands the counter is corrected to the real cost (`quota/lua/reconcile.lua`); and the
read reports its Postgres snapshot, which tells later landings whether this sum already saw them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import asyncpg

from quota.keys import end_user_id
from quota.periods import period_id
from quota.types import Level, SpendSnapshot

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

_USER = """
SELECT coalesce(sum(cost_usd), 0) FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 AND end_user = $4
"""
_OPEN_HOLDS = """
SELECT request_id::text, amount_usd FROM budget_holds h
WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3 AND period = $4 AND expires_at > now()
  AND NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = h.request_id)
"""


def hold_scope_id(level: Level) -> str:
    """A level's id in `budget_holds`: end users hashed, as in the Redis keys."""
    return end_user_id(level.scope_id) if level.scope == "user" else level.scope_id


def spend_query(level: Level) -> tuple[str, list[object]]:
    """The ledger query for one level's spend, and its arguments after (tenant, start, end)."""
    if level.scope == "key":
        return _KEY, [uuid.UUID(level.scope_id)]
    if level.scope == "model":
        return _MODEL, [level.scope_id]
    if level.scope == "user":
        return _USER, [end_user_id(level.scope_id)]
    return _TENANT, []


class LedgerSpend:
    """`quota.SpendSource` over `usage_records` (index on tenant and time; partitions pruned by the period)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def spent_usd(self, level: Level, start: dt.datetime, end: dt.datetime) -> SpendSnapshot:
        ledger, extra = spend_query(level)
        period = period_id(level.limits.budget_period, start)
        tenant = uuid.UUID(level.tenant_id)
        # One snapshot for the sum, the open holds and the snapshot's own description: a record that lands
        # meanwhile is either in all three or in none (and then reconciled when it lands).
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(f"SELECT ({ledger}), pg_current_snapshot()::text", tenant, start, end, *extra)
            assert row is not None
            open_holds = await conn.fetch(_OPEN_HOLDS, tenant, level.scope, hold_scope_id(level), period)
        held = tuple((r["request_id"], Decimal(r["amount_usd"])) for r in open_holds)
        return SpendSnapshot(
            spent_usd=Decimal(row[0]) + sum((amount for _, amount in held), Decimal(0)),
            snapshot=row[1],
            holds=held,
        )
