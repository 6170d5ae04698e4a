"""SIGTERM mid-stream (RELIABILITY T18; issue acceptance 8): readiness fails at once, in-flight work finishes
or ends with a terminal error event, every served request has its usage record, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.harness import config_toml
from tests.processes import serve_processes, tenant_key

SLOW_STREAM = """
[[deployments]]
kind = "simulator"
name = "sim-slow"
model = "slow"
simulator = { completion_tokens = 50, token_interval_ms = 100 }
[[models]]
name = "slow"
route = { policy = "fixed", deployment = "sim-slow" }
[prices.sim-slow]
input = 1.0
output = 1.0
"""
STREAMS = 50


async def _stream(client: httpx.AsyncClient, url: str, key: str) -> bytes:
    body = {"model": "slow", "messages": [{"role": "user", "content": "a long answer"}], "stream": True}
    async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        return b"".join([chunk async for chunk in response.aiter_bytes()])


async def _readyz_503_after(client: httpx.AsyncClient, base: str, since: float) -> float:
    while True:
        try:
            if (await client.get(f"{base}/readyz", timeout=0.5)).status_code == 503:
                return time.monotonic() - since
        except httpx.TransportError:
            return time.monotonic() - since
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("drain_timeout", "expect_done"), [(30, True), (3, False)], ids=["drained", "cut-at-deadline"])
async def test_sigterm_drains_streams_records_usage_and_exits_zero(
    tmp_path: Path, database_url: str, redis_url: str, drain_timeout: int, expect_done: bool
) -> None:
    env = {"SLUICE_DRAIN_TIMEOUT_S": str(drain_timeout), "SLUICE_DRAIN_GRACE_S": "0.5"}
    with serve_processes(
        tmp_path, config_toml(extra=SLOW_STREAM), database_url=database_url, redis_url=redis_url, extra_env=env
    ) as (proc,):
        _, _, key = await tenant_key(proc.base)
        async with httpx.AsyncClient(timeout=60) as client:
            streams = [
                asyncio.ensure_future(_stream(client, f"{proc.base_url}/chat/completions", key)) for _ in range(STREAMS)
            ]
            await asyncio.sleep(1.0)
            sent_at = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            ready_after = await _readyz_503_after(client, proc.base, sent_at)
            late = await client.post(
                f"{proc.base_url}/chat/completions",
                json={"model": "small", "messages": [{"role": "user", "content": "late"}]},
                headers={"authorization": f"Bearer {key}"},
            )
            bodies = await asyncio.gather(*streams)
            exit_code = await asyncio.to_thread(proc.process.wait, 30)
            exited_after = time.monotonic() - sent_at
        logs = proc.logs()
    assert ready_after <= 0.1 + 0.05, ready_after  # 50 ms for the probe itself on a loaded machine
    assert late.status_code == 503
    assert exit_code == 0
    assert exited_after <= 10
    for body in bodies:
        if expect_done:
            assert body.endswith(b"data: [DONE]\n\n")
        else:
            assert b'"error"' in body.rsplit(b"data: ", 1)[-1], "a cut stream ends with a terminal error event"
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT completion_tokens, truncated, cost_usd FROM usage_records WHERE model = 'slow'")
    finally:
        await conn.close()
    assert len(rows) == STREAMS, logs
    assert all(row["completion_tokens"] > 0 and row["cost_usd"] > 0 for row in rows)
    assert all(row["truncated"] is not expect_done for row in rows)
