"""The usage spool (RELIABILITY §6.2, "no usage record is ever lost"): what a process held in memory when it
died is on disk, and the next start writes it exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from gateway.accounting.ledger import Ledger, UsageRecord
from gateway.accounting.spool import Spool
from tests.integration.gateway.records import usage_record


def _record(cost: str = "0.001") -> UsageRecord:
    return usage_record(cost_usd=Decimal(cost), key_id=None, end_user="abc")


@pytest.fixture(name="pool")
async def fx_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def _count(pool: asyncpg.Pool) -> tuple[int, Decimal]:
    row = await pool.fetchrow("SELECT count(*), coalesce(sum(cost_usd), 0) FROM usage_records")
    assert row is not None
    return int(row[0]), Decimal(row[1])


async def test_records_of_a_process_that_died_before_its_flush_are_written_once_at_the_next_start(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    spool = Spool(tmp_path)
    dead = Ledger(pool, spool=spool)
    for record in [_record() for _ in range(5)]:
        dead.record(record)
    assert await dead.flush()  # these five were written …
    for record in [_record("0.002") for _ in range(3)]:
        dead.record(record)  # … these three were not when the process was killed
    spool.close(keep=True)  # what the kernel does to a killed process's files

    started = Ledger(pool, spool=Spool(tmp_path))
    assert await started.replay_spool() == 3
    assert await _count(pool) == (8, Decimal("0.011"))
    assert await started.replay_spool() == 0  # the segments are gone: nothing twice
    assert await _count(pool) == (8, Decimal("0.011"))


async def test_a_live_process_segments_are_left_alone_and_written_ones_are_deleted(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    live = Ledger(pool, spool=Spool(tmp_path))
    live.record(_record())
    other = Ledger(pool, spool=Spool(tmp_path))
    assert await other.replay_spool() == 0  # `live` holds its segment
    assert await live.flush()
    segments = list(tmp_path.glob("usage-*.jsonl"))
    assert all(path.stat().st_size == 0 for path in segments), "only empty current segments remain"
    await live.close()
    await other.close()
    assert not list(tmp_path.glob("usage-*.jsonl"))


async def test_a_torn_last_line_is_skipped_and_the_rest_replayed(pool: asyncpg.Pool, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    dead = Ledger(pool, spool=spool)
    dead.record(_record())
    dead.record(_record())
    spool.close(keep=True)  # killed
    segment = next(tmp_path.glob("usage-*.jsonl"))
    segment.write_bytes(segment.read_bytes() + b'{"request_id": "torn')
    assert await Ledger(pool, spool=Spool(tmp_path)).replay_spool() == 2
    assert (await _count(pool))[0] == 2
