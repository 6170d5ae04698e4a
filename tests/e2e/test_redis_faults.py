"""Redis slow, black-holed or emptied under traffic (RELIABILITY T10, T11): answers keep coming, none waits on
the Redis client's socket timeout, and the fallback is visible while it lasts and gone after."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from decimal import Decimal
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis.asyncio as aioredis

from tests.fakes.tcp_proxy import Latency, TcpFaultProxy, Timeout
from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway, file_config, running_gateway

_BODY = {"model": "fake-ok", "messages": [{"role": "user", "content": "still there?"}]}
_ADMISSION_TIMEOUT_S = 0.05
_UPSTREAM_S = 0.05
_MARGIN_S = 0.25  # RELIABILITY T11: a deadline for scheduling noise, not a benchmark


def _gauge(metrics: str, kind: str) -> float:
    match = re.search(rf'^sluice_quota_fallback_active{{kind="{kind}"}} (\S+)$', metrics, re.MULTILINE)
    assert match, metrics
    return float(match.group(1))


async def _traffic(client: httpx.AsyncClient, seconds: float, rps: float) -> list[tuple[int, float]]:
    """Requests at a steady rate, each on its own: (status, seconds it took)."""

    async def one() -> tuple[int, float]:
        started = time.perf_counter()
        response = await client.post("/v1/chat/completions", json=_BODY)
        return response.status_code, time.perf_counter() - started

    tasks = []
    for _ in range(int(seconds * rps)):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rps)
    return list(await asyncio.gather(*tasks))


async def test_slow_then_black_holed_redis_holds_no_request_past_the_admission_timeout(
    database_url: str, redis_url: str, fake: FakeUpstream
) -> None:
    fake.latency_s = _UPSTREAM_S
    target = urlsplit(redis_url)
    assert target.hostname and target.port
    async with TcpFaultProxy(target.hostname, target.port) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{target.path}"
        config = file_config(fake.base_url)
        async with running_gateway(
            database_url, proxied, config, admission_timeout_ms=_ADMISSION_TIMEOUT_S * 1000
        ) as gateway:
            _, key = await gateway.tenant_key(rpm=100_000, tpm=10_000_000, max_concurrency=200)
            headers = {"authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=gateway.base, headers=headers, timeout=30) as client:
                before = await _traffic(client, 1, 10)
                assert _gauge((await client.get("/metrics")).text, "rpm") == 0

                proxy.set(Latency(seconds=0.5))
                slow = await _traffic(client, 3, 10)
                proxy.set(Timeout())
                black_hole = await _traffic(client, 3, 10)
                during = (await client.get("/metrics")).text
                ready_during = (await client.get("/readyz")).status_code
                proxy.clear()
                cleared_at = time.monotonic()
                while _gauge((await client.get("/metrics")).text, "rpm") != 0 and time.monotonic() - cleared_at < 5:
                    await asyncio.sleep(0.05)
                recovered_s = time.monotonic() - cleared_at
                after = await _traffic(client, 2, 10)

    deadline = _ADMISSION_TIMEOUT_S + _UPSTREAM_S + _MARGIN_S
    for phase, results in (("before", before), ("slow", slow), ("black hole", black_hole), ("after", after)):
        assert {status for status, _ in results} == {200}, (phase, results)
        slowest = max(seconds for _, seconds in results)
        assert slowest <= deadline, f"{phase}: a request took {slowest:.3f} s (deadline {deadline:.3f} s)"
    assert _gauge(during, "rpm") == 1 and _gauge(during, "budget") == 1
    assert re.search(r'^sluice_quota_fail_open_total{kind="rpm"} [1-9]', during, re.MULTILINE), during
    assert ready_during == 503
    assert recovered_s <= 2.0


async def test_redis_emptied_mid_traffic_loses_no_request_and_rebuilds_budgets_from_the_ledger(
    gateway: Gateway, redis_url: str, database_url: str
) -> None:
    """T10: FLUSHALL and SCRIPT FLUSH under 20 rps: the scripts reload (NOSCRIPT), the budget counter is rebuilt
    from Postgres before the next budgeted admission, and it equals the ledger's spend."""
    tenant_id, key = await gateway.tenant_key(rpm=100_000, budget_usd="5", budget_period="day", max_concurrency=100)
    redis = aioredis.Redis.from_url(redis_url)
    async with httpx.AsyncClient(
        base_url=gateway.base, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        traffic = asyncio.create_task(_traffic(client, 4, 20))
        await asyncio.sleep(1.5)
        await redis.script_flush()
        await redis.flushdb()
        results = await traffic
        await asyncio.sleep(0.5)  # the last settlements
        await gateway.flush_ledger()
        usage = (await gateway.admin.get(f"/admin/tenants/{tenant_id}/usage")).json()
    await redis.aclose()
    assert {status for status, _ in results} == {200}, results
    connection = await asyncpg.connect(database_url)
    try:
        ledger_spend = await connection.fetchval(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_records WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
    finally:
        await connection.close()
    budget = next(q for q in usage["quotas"] if q["scope"] == "tenant" and q["kind"] == "budget")
    assert ledger_spend > 0
    assert Decimal(budget["used"]) == ledger_spend
