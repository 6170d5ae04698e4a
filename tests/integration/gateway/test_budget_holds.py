"""Budgets while Redis is unreachable (RELIABILITY §6.2, T09): fail closed onto an atomic reservation in
Postgres that holds across processes, settles to the real cost, and hands over to the ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.accounting.budget_holds import PostgresBudgetHolds
from gateway.accounting.ledger import Ledger, UsageRecord
from gateway.accounting.spend import LedgerSpend
from quota.errors import QuotaBackendError, QuotaExceededError
from quota.keys import end_user_id
from quota.limiter import Limiter, Reservation
from quota.types import Demand, Level, LevelLimits
from tests.integration.gateway.records import usage_record


@pytest.fixture(name="unreachable")
async def fx_unreachable() -> AsyncIterator[aioredis.Redis]:
    """A client of a port nobody listens on, failing at once: Redis is down for the whole test."""
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


@pytest.fixture(name="pools")
async def fx_pools(database_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """One pool per simulated gateway process."""
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=4) for _ in range(2)]
    yield pools
    for pool in pools:
        await pool.close()


def _limiter(redis: aioredis.Redis, pool: asyncpg.Pool, holds_after_s: float = 0.0) -> Limiter:
    """Holds from the first failed call (the gateway waits `holds_after_s` = 2 s into an outage: tested below)."""
    return Limiter(
        redis,
        LedgerSpend(pool),
        timeout_s=0.2,
        budget_holds=PostgresBudgetHolds(pool),
        holds_after_s=holds_after_s,
        processes=lambda: 2,
    )


def _level(scope: str = "tenant", tenant_id: str | None = None, scope_id: str | None = None, **limits: Any) -> Level:
    tenant_id = tenant_id or str(uuid.uuid4())
    return Level(
        tenant_id=tenant_id,
        scope=scope,  # type: ignore[arg-type]  # one of the Scope names
        scope_id=scope_id or tenant_id,
        limits=LevelLimits(budget_period="day", **limits),
    )


def _demand(cost: str) -> Demand:
    return Demand(request_id=str(uuid.uuid4()), tokens=0, cost_usd=Decimal(cost))


async def _try(limiter: Limiter, levels: list[Level], cost: str) -> Reservation | QuotaExceededError:
    try:
        return await limiter.reserve(levels, _demand(cost))
    except QuotaExceededError as refused:
        return refused


async def test_two_processes_admit_exactly_what_fits_the_budget_and_refuse_the_rest(
    unreachable: aioredis.Redis, pools: list[asyncpg.Pool]
) -> None:
    limiters = [_limiter(unreachable, pool) for pool in pools]
    level = _level(budget_usd=Decimal("1.00"))
    results = await asyncio.gather(*(_try(limiters[i % 2], [level], "0.3") for i in range(12)))
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if isinstance(r, QuotaExceededError)]
    assert len(admitted) == 3 and len(refused) == 9
    assert all(r.admission.fail_open and r.admission.budget_held for r in admitted)
    assert {r.kind for r in refused} == {"budget"} and all((r.retry_after or 0) > 0 for r in refused)
    # Settled to the real cost: what it did not use is free again.
    await admitted[0].settle(0, Decimal("0.1"))
    assert isinstance(await _try(limiters[1], [level], "0.3"), Reservation)  # 0.1 + 0.3 + 0.3 + 0.3 = 1.0
    assert isinstance(await _try(limiters[0], [level], "0.000001"), QuotaExceededError)


async def test_a_hold_hands_over_to_the_ledger_once_the_usage_record_is_written(
    unreachable: aioredis.Redis, pools: list[asyncpg.Pool]
) -> None:
    limiter = _limiter(unreachable, pools[0])
    level = _level(budget_usd=Decimal("1.00"))
    held = await limiter.reserve([level], _demand("0.6"))
    ledger = Ledger(pools[0])
    ledger.record(_record(held.demand.request_id, level.tenant_id, Decimal("0.25")))
    assert await ledger.flush()
    await held.settle(0, Decimal("0.25"))
    # Counted once: the ledger's 0.25 (the hold is retired), so 0.75 still fits and one cent more does not.
    assert isinstance(await _try(limiter, [level], "0.75"), Reservation)
    assert isinstance(await _try(limiter, [level], "0.01"), QuotaExceededError)
    assert (
        await pools[0].fetchval(
            "SELECT count(*) FROM budget_holds WHERE request_id = $1", uuid.UUID(held.demand.request_id)
        )
        == 0
    )


async def test_every_level_is_held_or_none_is(unreachable: aioredis.Redis, pools: list[asyncpg.Pool]) -> None:
    limiter = _limiter(unreachable, pools[0])
    tenant = _level(budget_usd=Decimal("1.00"))
    user = _level("user", tenant.tenant_id, "alice@example.com", budget_usd=Decimal("0.20"))
    assert isinstance(await _try(limiter, [tenant, user], "0.15"), Reservation)
    refused = await _try(limiter, [tenant, user], "0.15")
    assert isinstance(refused, QuotaExceededError) and "user" in str(refused)
    # The refusal at the user level held nothing at the tenant level: 0.85 is still free there.
    assert isinstance(await _try(limiter, [tenant], "0.85"), Reservation)
    scope_ids = {row[0] for row in await pools[0].fetch("SELECT DISTINCT scope_id FROM budget_holds")}
    assert "alice@example.com" not in scope_ids and end_user_id("alice@example.com") in scope_ids


async def test_end_user_budget_is_read_from_that_users_records_only(
    unreachable: aioredis.Redis, pools: list[asyncpg.Pool]
) -> None:
    limiter = _limiter(unreachable, pools[0])
    tenant_id = str(uuid.uuid4())
    ledger = Ledger(pools[0])
    ledger.record(_record(str(uuid.uuid4()), tenant_id, Decimal("0.5"), end_user=end_user_id("bob")))
    ledger.record(_record(str(uuid.uuid4()), tenant_id, Decimal("5"), end_user=end_user_id("carol")))
    assert await ledger.flush()
    bob = _level("user", tenant_id, "bob", budget_usd=Decimal("1.00"))
    assert isinstance(await _try(limiter, [bob], "0.5"), Reservation)
    assert isinstance(await _try(limiter, [bob], "0.01"), QuotaExceededError)


async def test_a_blip_is_refused_and_only_an_outage_goes_to_postgres(
    unreachable: aioredis.Redis, pools: list[asyncpg.Pool]
) -> None:
    """Spend admitted through Redis just before it stalled is invisible to Postgres for a moment (in flight, or
    in a ledger writer's buffer): budgeted requests are refused (503, retry) until the outage is 0.3 s old."""
    limiter = _limiter(unreachable, pools[0], holds_after_s=0.3)
    level = _level(budget_usd=Decimal("1.00"))
    with pytest.raises(QuotaBackendError):
        await limiter.reserve([level], _demand("0.1"))
    while limiter.health.down_for_s < 0.3:
        with pytest.raises(QuotaBackendError):
            await limiter.reserve([level], _demand("0.1"))
        await asyncio.sleep(0.05)
    assert (await limiter.reserve([level], _demand("0.1"))).admission.budget_held
    await limiter.aclose()


async def test_postgres_down_as_well_refuses_budgeted_requests_with_a_backend_error(
    unreachable: aioredis.Redis, database_url: str
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    limiter = _limiter(unreachable, pool)
    await pool.close()
    with pytest.raises(QuotaBackendError):
        await limiter.reserve([_level(budget_usd=Decimal("1.00"))], _demand("0.1"))


async def test_spend_held_in_postgres_during_a_partition_reaches_the_redis_counter_afterwards(
    redis_url: str, pools: list[asyncpg.Pool]
) -> None:
    """Redis kept its data (a partition, not a restart): the counter is rebuilt after the outage, so what was
    spent around it in Postgres is not forgotten."""
    client = aioredis.Redis.from_url(redis_url)
    limiter = _limiter(client, pools[0])
    ledger = Ledger(pools[0])
    level = _level(budget_usd=Decimal("1.00"))
    before = await limiter.reserve([level], _demand("0.2"))
    assert not before.admission.fail_open
    ledger.record(_record(before.demand.request_id, level.tenant_id, Decimal("0.2")))
    await before.settle(0, Decimal("0.2"))
    for _ in range(3):
        limiter.health.failed()  # as three timed-out calls would
    during = await limiter.reserve([level], _demand("0.6"))
    assert during.admission.budget_held
    ledger.record(_record(during.demand.request_id, level.tenant_id, Decimal("0.5")))
    await during.settle(0, Decimal("0.5"))
    assert await ledger.flush()
    while not limiter.health.up:  # the probe finds Redis answering
        await asyncio.sleep(0.05)
    after = await _try(limiter, [level], "0.3")
    assert isinstance(after, Reservation) and not after.admission.fail_open  # 0.2 + 0.5 + 0.3 = 1.00
    assert isinstance(await _try(limiter, [level], "0.01"), QuotaExceededError)
    await limiter.aclose()
    await client.aclose()


def _record(request_id: str, tenant_id: str, cost: Decimal, **extra: object) -> UsageRecord:
    return usage_record(request_id=request_id, tenant_id=tenant_id, cost_usd=cost, key_id=None, **extra)
