"""No usage record is ever lost: a `sluice serve` process `kill -9`ed with its batch still in memory leaves the
records in its spool, and the next start writes every one of them, once."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx

from tests.fakes.upstream import FakeUpstream
from tests.harness import config_toml
from tests.processes import serve_processes, tenant_key
from tests.quota_history import load_history


async def test_records_held_in_memory_by_a_killed_process_are_written_by_the_next_start(
    tmp_path: Path, fake: FakeUpstream, database_url: str, redis_url: str
) -> None:
    # A flush interval longer than the test: every record is still in memory at the kill.
    slow_flush = {"SLUICE_LEDGER_FLUSH_INTERVAL_S": "3600"}
    config = config_toml(fake.base_url)
    with serve_processes(tmp_path, config, database_url=database_url, redis_url=redis_url, extra_env=slow_flush) as (
        proc,
    ):
        tenant_id, _, key = await tenant_key(proc.base, "killed", rpm=10_000)
        body = {"model": "fake-ok", "messages": [{"role": "user", "content": "remember me"}]}
        async with httpx.AsyncClient(base_url=proc.base, headers={"authorization": f"Bearer {key}"}) as client:
            answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(40)))
        assert all(answer.status_code == 200 for answer in answers)
        charged = sum((Decimal(answer.headers["x-sluice-cost-usd"]) for answer in answers), Decimal(0))
        assert await load_history(database_url, tenant_id) == []  # nothing flushed yet
        proc.process.kill()
        proc.process.wait()
    with serve_processes(tmp_path, config, database_url=database_url, redis_url=redis_url):
        history = await load_history(database_url, tenant_id)  # replayed before the new process is ready
    assert sorted(e.request_id for e in history) == sorted(a.headers["x-request-id"] for a in answers)
    assert sum((e.cost_usd for e in history), Decimal(0)) == charged
