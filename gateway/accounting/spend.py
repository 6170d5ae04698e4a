"""Spend read back from Postgres: only to rebuild budget counters Redis lost (never per request).

What the ledger holds, plus the budget holds taken in Postgres while Redis was away whose usage records
have not reached the ledger yet (`budget_holds.py`): a counter rebuilt right after an outage must not
forget the requests still in flight through that fallback. A hold not yet settled counts its whole
reservation, so a rebuilt counter can only be high by the unused part of those, never low.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import asyncpg

from quota.keys import end_user_id
from quota.periods import period_id
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

_USER = """
SELECT coalesce(sum(cost_usd), 0) FROM usage_records
WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 AND end_user = $4
"""
_OPEN_HOLDS = """
SELECT coalesce(sum(amount_usd), 0) FROM budget_holds h
WHERE tenant_id = $1 AND scope = ${0} AND scope_id = ${1} AND period = ${2} AND expires_at > now()
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

    async def spent_usd(self, level: Level, start: dt.datetime, end: dt.datetime) -> Decimal:
        ledger, extra = spend_query(level)
        n = 4 + len(extra)
        holds = _OPEN_HOLDS.replace("${0}", f"${n}").replace("${1}", f"${n + 1}").replace("${2}", f"${n + 2}")
        # One statement, so one snapshot: a usage record that lands meanwhile is counted once, not 0 or 2 times.
        query = f"SELECT ({ledger}) + ({holds})"
        period = period_id(level.limits.budget_period, start)
        args = [uuid.UUID(level.tenant_id), start, end, *extra, level.scope, hold_scope_id(level), period]
        return Decimal(await self._pool.fetchval(query, *args))
