"""The usage ledger on real Postgres: batched, idempotent, partitioned, retried until written."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from gateway.accounting.ledger import Ledger
from tests.integration.gateway.records import usage_record


@pytest.fixture(name="pool")
async def fx_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_records_are_written_in_one_batch_with_exact_costs(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    records = [usage_record(cost_usd=Decimal("0.0000000001") * i) for i in range(1, 501)]
    for record in records:
        ledger.record(record)
    assert await ledger.flush()
    assert ledger.pending == 0
    total = await pool.fetchval("SELECT sum(cost_usd) FROM usage_records")
    assert total == sum(r.cost_usd for r in records)
    assert await pool.fetchval("SELECT count(*) FROM usage_records") == 500


async def test_a_batch_written_twice_is_counted_once(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    record = usage_record()
    ledger.record(record)
    ledger.record(record)
    assert await ledger.flush()
    ledger.record(record)
    assert await ledger.flush()
    assert await pool.fetchval("SELECT count(*) FROM usage_records") == 1


async def test_records_land_in_monthly_partitions_made_ahead(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    await ledger.ensure_partitions()
    next_month = (dt.datetime.now(dt.UTC).replace(day=1) + dt.timedelta(days=32)).replace(day=2)
    ledger.record(usage_record(created_at=next_month))
    assert await ledger.flush()
    partition = await pool.fetchval("SELECT tableoid::regclass::text FROM usage_records")
    assert partition == f"usage_records_y{next_month:%Y}m{next_month:%m}"


async def test_unwritable_batch_stays_queued_and_is_written_on_recovery(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    far_future = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)  # no partition exists for it: the insert fails
    ledger.record(usage_record(created_at=far_future))
    assert not await ledger.flush()
    assert ledger.pending == 1
    await pool.execute("SELECT sluice_ensure_usage_partitions('2999-01-01', 1)")
    assert await ledger.flush()
    assert await pool.fetchval("SELECT count(*) FROM usage_records") == 1
