"""Budget counters count every usage record exactly once, whatever order settlement, the ledger write and a
rebuild after Redis lost its data come in (quota/lua/reconcile.lua; T09, T10).

Real Redis, real Postgres, the real limiter and ledger writer; each test forces one interleaving of the
events a loaded gateway produces by chance, and checks the rebuilt counter against the ledger's sum.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.accounting.budget_holds import PostgresBudgetHolds
from gateway.accounting.ledger import Ledger, UsageRecord
from gateway.accounting.spend import LedgerSpend
from quota.keys import level_keys
from quota.limiter import Limiter, Reservation
from quota.periods import period_id
from quota.types import Demand, Level, LevelLimits, SpendSnapshot
from tests.integration.gateway.records import usage_record

_NANO = Decimal("0.000000001")


class LedgerSpendThen(LedgerSpend):
    """The real ledger read, with the ledger writer's next flush forced just before or just after it: a
    record landing while a counter is being rebuilt, which a busy gateway does now and then."""

    def __init__(self, pool: asyncpg.Pool, when: str, step: Callable[[], Awaitable[object]]) -> None:
        super().__init__(pool)
        self.when = when
        self.step: Callable[[], Awaitable[object]] | None = step

    async def spent_usd(self, level: Level, start: dt.datetime, end: dt.datetime) -> SpendSnapshot:
        step, self.step = self.step, None  # once: the first rebuild only
        if step is not None and self.when == "before":
            await step()
        spend = await super().spent_usd(level, start, end)
        if step is not None and self.when == "after":
            await step()
        return spend


@pytest.fixture(name="pool")
async def fx_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def _level() -> Level:
    tenant_id = str(uuid.uuid4())
    limits = LevelLimits(budget_usd=Decimal("10"), budget_period="day")
    return Level(tenant_id=tenant_id, scope="tenant", scope_id=tenant_id, limits=limits)


def _record(reservation: Reservation, cost: str) -> UsageRecord:
    admitted_ms = reservation.admission.admitted_at_ms
    return usage_record(
        request_id=reservation.demand.request_id,
        tenant_id=reservation.levels[0].tenant_id,
        key_id=None,
        cost_usd=Decimal(cost),
        admitted_at=dt.datetime.fromtimestamp(admitted_ms / 1000, dt.UTC) if admitted_ms else None,
        budget_trail=reservation.trail,
    )


async def _reserve(limiter: Limiter, level: Level, usd: str = "0.5") -> Reservation:
    return await limiter.reserve([level], Demand(request_id=str(uuid.uuid4()), tokens=0, cost_usd=Decimal(usd)))


async def _counter(client: aioredis.Redis, level: Level) -> tuple[Decimal, Decimal]:
    """(spent, reserved) of the level's budget counter today."""
    key = level_keys(level, period_id("day", dt.datetime.now(dt.UTC)))[3]
    spent, reserved = await client.hmget(key, ["spent", "reserved"])
    return Decimal(int(spent or 0)) * _NANO, Decimal(int(reserved or 0)) * _NANO


async def _ledger_sum(pool: asyncpg.Pool, level: Level) -> Decimal:
    total = await pool.fetchval(
        "SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE tenant_id = $1", uuid.UUID(level.tenant_id)
    )
    return Decimal(total)


@pytest.mark.parametrize("order", ["settle-then-land", "land-then-settle"])
async def test_without_a_loss_settlement_alone_counts_each_request(
    client: aioredis.Redis, pool: asyncpg.Pool, order: str
) -> None:
    """The everyday path: reporting a landing adds nothing, whether the record lands before (a stream accounts
    before its settlement task runs) or after the settlement."""
    limiter = Limiter(client, LedgerSpend(pool), timeout_s=5)
    ledger = Ledger(pool, reconcile=limiter.reconcile)
    level = _level()
    for cost in ("0.1", "0.2", "0.3"):
        reservation = await _reserve(limiter, level)
        ledger.record(_record(reservation, cost))
        if order == "land-then-settle":
            assert await ledger.flush()
        await reservation.settle(0, Decimal(cost))
        assert await ledger.flush()
    assert await _counter(client, level) == (Decimal("0.6"), Decimal(0))
    assert await _ledger_sum(pool, level) == Decimal("0.6")
    await limiter.aclose()


async def test_spend_settled_before_redis_lost_it_and_written_after_the_rebuild_is_counted_once(
    client: aioredis.Redis, pool: asyncpg.Pool
) -> None:
    limiter = Limiter(client, LedgerSpend(pool), timeout_s=5)
    ledger = Ledger(pool, reconcile=limiter.reconcile)
    level = _level()
    first = await _reserve(limiter, level)
    ledger.record(_record(first, "0.1"))
    await first.settle(0, Decimal("0.1"))
    await client.flushdb()  # Redis restarts empty; the record is still in the writer's buffer
    second = await _reserve(limiter, level)  # rebuilds the counter from a ledger that lacks the record
    assert await _counter(client, level) == (Decimal(0), Decimal("0.5"))
    assert await ledger.flush()  # lands after the rebuild's snapshot: reconciled into the counter
    ledger.record(_record(second, "0.2"))
    await second.settle(0, Decimal("0.2"))
    assert await ledger.flush()
    assert await _counter(client, level) == (Decimal("0.3"), Decimal(0))
    assert await _ledger_sum(pool, level) == Decimal("0.3")
    await limiter.aclose()


async def test_admitted_before_the_loss_written_after_the_rebuild_then_settled_is_counted_once(
    client: aioredis.Redis, pool: asyncpg.Pool
) -> None:
    limiter = Limiter(client, LedgerSpend(pool), timeout_s=5)
    ledger = Ledger(pool, reconcile=limiter.reconcile)
    level = _level()
    first = await _reserve(limiter, level)
    await client.flushdb()
    await _reserve(limiter, level, "0")  # rebuilds the counter: nothing in the ledger yet
    ledger.record(_record(first, "0.1"))  # a stream accounts before it settles (settlement runs as a task)
    assert await ledger.flush()  # admitted before the rebuild: counted on landing, settlement will not charge it
    assert (await _counter(client, level))[0] == Decimal("0.1")
    await first.settle(0, Decimal("0.1"))
    assert (await _counter(client, level))[0] == Decimal("0.1")
    assert await _ledger_sum(pool, level) == Decimal("0.1")
    await limiter.aclose()


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_record_landing_while_the_counter_is_rebuilt_is_counted_once(
    client: aioredis.Redis, pool: asyncpg.Pool, when: str
) -> None:
    """`before`: the record is in the rebuild's snapshot (counted by the sum); `after`: it is not (counted
    when seed.lua reads what landed meanwhile)."""
    ledger: Ledger | None = None

    async def flush() -> None:
        assert ledger is not None and await ledger.flush()

    limiter = Limiter(client, LedgerSpendThen(pool, when, flush), timeout_s=5)
    ledger = Ledger(pool, reconcile=limiter.reconcile)
    level = _level()
    first = await _reserve(limiter, level)  # seeds too, which fires the forced flush with nothing pending
    ledger.record(_record(first, "0.1"))
    await first.settle(0, Decimal("0.1"))
    await client.flushdb()
    assert isinstance(limiter._spend, LedgerSpendThen)
    limiter._spend.step = flush  # the next rebuild writes the pending record just before or after its read
    second = await _reserve(limiter, level)
    assert await _counter(client, level) == (Decimal("0.1"), Decimal("0.5"))
    ledger.record(_record(second, "0.25"))
    await second.settle(0, Decimal("0.25"))
    assert await ledger.flush()
    assert await _counter(client, level) == (Decimal("0.35"), Decimal(0))
    assert await _ledger_sum(pool, level) == Decimal("0.35")
    await limiter.aclose()


async def test_a_landing_reported_twice_is_counted_once(client: aioredis.Redis, pool: asyncpg.Pool) -> None:
    """The ledger writer retries a report whose reply was lost: the second changes nothing."""
    landings = []

    async def report(batch: object) -> None:
        landings.extend(batch)  # type: ignore[call-overload]  # a sequence of Landing
        await limiter.reconcile(landings)

    limiter = Limiter(client, LedgerSpend(pool), timeout_s=5)
    ledger = Ledger(pool, reconcile=report)
    level = _level()
    first = await _reserve(limiter, level)
    ledger.record(_record(first, "0.1"))
    await first.settle(0, Decimal("0.1"))
    await client.flushdb()
    await _reserve(limiter, level, "0")
    assert await ledger.flush()
    await limiter.reconcile(landings)
    assert await _counter(client, level) == (Decimal("0.1"), Decimal(0))
    await limiter.aclose()


async def test_spend_held_in_postgres_during_a_partition_reaches_the_counter_exactly(
    client: aioredis.Redis, pool: asyncpg.Pool
) -> None:
    """Redis kept its counters through the outage: what was spent around it in Postgres is handed back on
    recovery (its held amount) and corrected to the real cost when its record lands."""
    limiter = Limiter(client, LedgerSpend(pool), timeout_s=5, budget_holds=PostgresBudgetHolds(pool), holds_after_s=0)
    ledger = Ledger(pool, reconcile=limiter.reconcile)
    level = _level()
    before = await _reserve(limiter, level)
    ledger.record(_record(before, "0.2"))
    await before.settle(0, Decimal("0.2"))
    assert await ledger.flush()
    for _ in range(3):
        limiter.health.failed()  # as three timed-out calls would
    held = [await _reserve(limiter, level) for _ in range(2)]
    assert all(r.admission.budget_held for r in held)
    ledger.record(_record(held[0], "0.3"))
    await held[0].settle(0, Decimal("0.3"))
    assert await ledger.flush()  # lands while Redis is away: the report waits for it
    while not limiter.health.up:  # the probe finds Redis answering
        await asyncio.sleep(0.05)
    after = await _reserve(limiter, level, "0")  # hands back 0.3 (settled) and 0.5 (held[1], not settled)
    assert await _counter(client, level) == (Decimal("1.0"), Decimal(0))
    assert await ledger.flush()  # the waiting report: held[0] was counted at its real cost already
    assert await _counter(client, level) == (Decimal("1.0"), Decimal(0))
    ledger.record(_record(held[1], "0.05"))
    await held[1].settle(0, Decimal("0.05"))
    ledger.record(_record(after, "0"))
    await after.settle(0, Decimal(0))
    assert await ledger.flush()  # held[1] lands: 0.5 counted becomes its real 0.05
    assert await _counter(client, level) == (Decimal("0.55"), Decimal(0))
    assert await _ledger_sum(pool, level) == Decimal("0.55")
    await limiter.aclose()
