"""The queue stage through the gateway: a deployment at its global capacity makes requests wait, fairly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.harness import Gateway, file_config, running_gateway

SLOW = """
[[deployments]]
kind = "simulator"
name = "sim-capped"
model = "capped"
capacity = 2
simulator = { latency_ms = 300, completion_tokens = 4 }
[[models]]
name = "capped"
route = { policy = "fixed", deployment = "sim-capped" }
"""
BODY = {"model": "capped", "messages": [{"role": "user", "content": "wait your turn"}], "max_tokens": 4}


@pytest.fixture(name="capped")
async def fx_capped(database_url: str, redis_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, redis_url, file_config(extra=SLOW)) as gateway:
        yield gateway


async def _post(client: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    return await client.post("/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}", **headers})


async def test_requests_beyond_capacity_wait_their_turn_and_all_succeed(capped: Gateway) -> None:
    _, key = await capped.tenant_key()
    async with httpx.AsyncClient(base_url=capped.base_url, timeout=30) as client:
        started = asyncio.get_running_loop().time()
        responses = await asyncio.gather(*(_post(client, key) for _ in range(6)))
        elapsed = asyncio.get_running_loop().time() - started
    assert [r.status_code for r in responses] == [200] * 6
    assert elapsed >= 0.9 - 0.05, "6 calls of 300 ms through 2 slots take three rounds"
    metrics = (await capped.admin.get("/metrics")).text
    assert "sluice_queue_wait_seconds_count" in metrics


async def test_wait_past_the_deadline_is_a_429_queue_timeout_with_retry_after(capped: Gateway) -> None:
    _, key = await capped.tenant_key(max_queue_ms=100)
    async with httpx.AsyncClient(base_url=capped.base_url, timeout=30) as client:
        responses = await asyncio.gather(*(_post(client, key) for _ in range(4)))
    refused = [r for r in responses if r.status_code == 429]
    assert len([r for r in responses if r.status_code == 200]) == 2
    assert len(refused) == 2
    for response in refused:
        assert response.json()["error"]["code"] == "queue_timeout"
        assert int(response.headers["retry-after"]) >= 1


async def test_client_may_ask_for_a_shorter_wait_but_not_beyond_the_tenant_cap(capped: Gateway) -> None:
    _, key = await capped.tenant_key(max_queue_ms=5000, max_queue_ms_cap=5000)
    async with httpx.AsyncClient(base_url=capped.base_url, timeout=30) as client:
        holders = [asyncio.ensure_future(_post(client, key)) for _ in range(2)]
        await asyncio.sleep(0.05)
        impatient = await _post(client, key, **{"x-sluice-max-queue-ms": "50"})
        await asyncio.gather(*holders)
        bad = await _post(client, key, **{"x-sluice-max-queue-ms": "soon"})
    assert impatient.status_code == 429 and impatient.json()["error"]["code"] == "queue_timeout"
    assert bad.status_code == 400


async def test_per_tenant_queue_cap_refuses_at_once(capped: Gateway) -> None:
    _, key = await capped.tenant_key(max_queued=1)
    async with httpx.AsyncClient(base_url=capped.base_url, timeout=30) as client:
        responses = await asyncio.gather(*(_post(client, key) for _ in range(5)))
    codes = sorted(r.json()["error"]["code"] for r in responses if r.status_code == 429)
    assert [r.status_code for r in responses].count(200) == 3  # 2 slots + 1 waiting
    assert codes == ["concurrency_limit_exceeded"] * 2
