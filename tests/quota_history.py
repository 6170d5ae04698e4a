"""Offline checks over the usage ledger, Jepsen style (RELIABILITY §9): load a tenant's whole history from
`usage_records`, then check window and budget invariants over it after the fact, on the Redis clock.

The window check is exact because the gateway stores the Redis `TIME` its admission script read as
`admitted_at` (milliseconds), the same clock and the same instants the sliding log compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal, Inexact, localcontext
from typing import TypeAlias

import asyncpg
import msgspec

Database: TypeAlias = "asyncpg.Connection[asyncpg.Record] | str"
"""An open connection, or a database URL to connect to for the one call."""

_HISTORY = """
SELECT request_id::text AS request_id, key_id::text AS key_id, model, admitted_at, cost_usd, prompt_tokens,
       completion_tokens
FROM usage_records
WHERE tenant_id = $1::uuid
ORDER BY admitted_at, request_id
"""
_COUNT = "SELECT count(*) FROM usage_records WHERE tenant_id = $1::uuid"


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One served request as the ledger recorded it."""

    request_id: str
    key_id: str | None
    model: str
    """The model name the client asked for."""
    admitted_at: dt.datetime | None
    """Redis clock at admission; `None` when no Redis limit applied (no limit, or admission failed open)."""
    cost_usd: Decimal
    prompt_tokens: int
    completion_tokens: int


@contextlib.asynccontextmanager
async def _connected(database: Database) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    if not isinstance(database, str):
        yield database
        return
    conn = await asyncpg.connect(database)
    try:
        yield conn
    finally:
        await conn.close()


async def load_history(database: Database, tenant_id: str) -> list[Entry]:
    """Every usage record of the tenant, oldest admission first."""
    async with _connected(database) as conn:
        rows = await conn.fetch(_HISTORY, tenant_id)
    return [Entry(**dict(row)) for row in rows]


async def count_records(database: Database, tenant_id: str) -> int:
    async with _connected(database) as conn:
        count = await conn.fetchval(_COUNT, tenant_id)
    return int(count)


async def wait_for_records(
    database: Database, tenant_id: str, expected: int, *, timeout_s: float = 10.0, interval_s: float = 0.1
) -> int:
    """Poll until the tenant has at least `expected` usage records or `timeout_s` has passed, and return the
    last count seen: the ledger writer flushes in batches on an interval, so rows trail the responses."""
    async with _connected(database) as conn:
        deadline = time.monotonic() + timeout_s
        count = await count_records(conn, tenant_id)
        while count < expected and time.monotonic() < deadline:
            await asyncio.sleep(interval_s)
            count = await count_records(conn, tenant_id)
    return count


def max_admitted_in_any_window(times: Iterable[dt.datetime], window_s: float) -> int:
    """The most admissions in any half-open window [t, t + `window_s`), exact, by a two-pointer sweep.

    A busiest window can always start at an admission (slide its start right up to the first admission
    inside it: nothing leaves), so only those starts are tried. Both pointers only move forward: O(n) after
    the sort. `timedelta` arithmetic is in integer microseconds, so boundaries are compared exactly.
    """
    if window_s <= 0:
        raise ValueError(f"`window_s` must be positive, not {window_s}")
    window = dt.timedelta(seconds=window_s)
    ordered = sorted(times)
    best = end = 0
    for start, opened in enumerate(ordered):
        # Invariant: `end` > `start` after this loop, since `ordered[start]` is inside its own window.
        while end < len(ordered) and ordered[end] < opened + window:
            end += 1
        best = max(best, end - start)
    return best


def total_cost(costs: Iterable[Decimal]) -> Decimal:
    """The exact sum of `costs` in USD: `Decimal` only (a float would round), and any rounding raises."""
    total = Decimal(0)
    with localcontext() as ctx:
        ctx.traps[Inexact] = True
        for cost in costs:
            if not isinstance(cost, Decimal):
                raise TypeError(f"cost {cost!r} is a {type(cost).__name__}, not a Decimal: money is summed exactly")
            total += cost
    return total
