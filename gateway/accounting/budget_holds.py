"""Budgets while Redis is unreachable: an atomic reservation in Postgres (RELIABILITY §6.2, fail closed).

Per budget level and period, under a transaction-scoped advisory lock taken in a fixed order (so two
multi-level admissions cannot deadlock): retire the holds whose usage record has reached the ledger (it
counts them now) or that expired, then admit only if the ledger's spend plus the open holds plus this
request fit the budget, and insert its hold. Every process sees the same rows, so the budget holds
across processes exactly as it does in Redis. Used only during an outage; the hot path never comes here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from decimal import Decimal

import asyncpg

from gateway.accounting.spend import hold_scope_id, spend_query
from quota.errors import QuotaBackendError
from quota.limiter import BudgetSpan

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
_RETIRE = """
DELETE FROM budget_holds h
WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3 AND period = $4
  AND (expires_at < now() OR EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = h.request_id))
"""
_HELD = """
SELECT coalesce(sum(amount_usd), 0) FROM budget_holds
WHERE tenant_id = $1 AND scope = $2 AND scope_id = $3 AND period = $4
"""
_HOLD = """
INSERT INTO budget_holds (tenant_id, scope, scope_id, period, request_id, amount_usd, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
ON CONFLICT DO NOTHING
"""
_SETTLE = "UPDATE budget_holds SET amount_usd = $2 WHERE request_id = $1"
_RELEASE = "DELETE FROM budget_holds WHERE request_id = $1"
_BACKEND_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresBudgetHolds:
    """`quota.BudgetHolds` on the gateway's pool."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 2.0) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    async def hold(self, spans: Sequence[BudgetSpan], request_id: str, usd: Decimal, ttl_s: float) -> int | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._hold(spans, request_id, usd, ttl_s)
        except _BACKEND_ERRORS as exc:
            raise QuotaBackendError("budgets cannot be enforced: Redis and Postgres are both unreachable") from exc

    async def _hold(self, spans: Sequence[BudgetSpan], request_id: str, usd: Decimal, ttl_s: float) -> int | None:
        rid = uuid.UUID(request_id)
        order = sorted(range(len(spans)), key=lambda i: _lock_name(spans[i]))
        idents = [_ident(span) for span in spans]
        async with self._pool.acquire() as conn, conn.transaction():
            for i in order:
                await conn.execute(_LOCK, _lock_name(spans[i]))
            for i in order:
                span, ident = spans[i], idents[i]
                budget = span.level.limits.budget_usd
                assert budget is not None
                await conn.execute(_RETIRE, *ident)
                held = Decimal(await conn.fetchval(_HELD, *ident))
                query, extra = spend_query(span.level)
                spent = Decimal(await conn.fetchval(query, ident[0], span.start, span.end, *extra))
                if spent + held + usd > budget:
                    return i  # the transaction rolls back: nothing was held anywhere
            for i in order:
                await conn.execute(_HOLD, *idents[i], rid, usd, ttl_s)
        return None

    async def settle(self, request_id: str, usd: Decimal) -> None:
        """The hold becomes the real cost until the usage record reaches the ledger (nothing, if it cost nothing)."""
        rid = uuid.UUID(request_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                if usd > 0:
                    await self._pool.execute(_SETTLE, rid, usd)
                else:
                    await self._pool.execute(_RELEASE, rid)
        except _BACKEND_ERRORS:
            pass  # the hold keeps the reserved amount until it expires: conservative, never an overspend


def _ident(span: BudgetSpan) -> tuple[uuid.UUID, str, str, str]:
    """The level and period as `budget_holds` keys them."""
    level = span.level
    return uuid.UUID(level.tenant_id), level.scope, hold_scope_id(level), span.period


def _lock_name(span: BudgetSpan) -> str:
    level = span.level
    return f"sluice:budget:{level.tenant_id}:{level.scope}:{hold_scope_id(level)}:{span.period}"
