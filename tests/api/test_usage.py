"""`GET /v1/usage` and the admin usage route: spend by model and what remains of each quota."""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx

from tests.harness import ADMIN_TOKEN, Gateway

BODY = {"model": "small", "messages": [{"role": "user", "content": "count me"}]}


async def test_usage_shows_spend_and_what_remains_of_each_limit(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant_key(rpm=10, budget_usd="1.00", max_concurrency=5)
    costs = []
    async with httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as client:
        for _ in range(2):
            response = await client.post("/chat/completions", json=BODY)
            costs.append(Decimal(response.headers["x-sluice-cost-usd"]))
        await gateway.flush_ledger()
        own = (await client.get("/usage")).json()
    admin = (await gateway.admin.get(f"/admin/tenants/{tenant_id}/usage")).json()
    assert own == admin | {"until": own["until"]}
    assert own["requests"] == 2
    assert Decimal(own["cost_usd"]) == sum(costs)
    remaining = {(q["scope"], q["kind"]): q for q in own["quotas"]}
    assert Decimal(remaining[("tenant", "rpm")]["remaining"]) == 8
    assert Decimal(remaining[("tenant", "budget")]["used"]) == sum(costs)
    assert Decimal(remaining[("tenant", "concurrency")]["used"]) == 0


async def test_quota_change_through_admin_api_applies_to_the_next_request(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant_key(rpm=100)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers) as client:
        assert (await client.post("/chat/completions", json=BODY)).status_code == 200
        put = await gateway.admin.put(f"/admin/tenants/{tenant_id}/quota", json={"rpm": 1})
        assert put.status_code == 200 and put.json()["rpm"] == 1
        refused = await client.post("/chat/completions", json=BODY)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


async def test_usage_report_cli_prints_a_table_and_writes_csv(gateway: Gateway, tmp_path: Path) -> None:
    tenant_id, key = await gateway.tenant_key()
    async with httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as client:
        for model in ("small", "large", "small"):
            assert (await client.post("/chat/completions", json={**BODY, "model": model})).status_code == 200
    await gateway.flush_ledger()
    csv_path = tmp_path / "usage.csv"
    env = {**os.environ, "SLUICE_URL": gateway.base, "SLUICE_ADMIN_TOKEN": ADMIN_TOKEN}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "usage", "report", tenant_id, "--csv", str(csv_path)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "total: 3 requests" in result.stdout
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["model"], row["route"], row["requests"]) for row in rows} == {
        ("small", "fixed", "2"),
        ("large", "fixed", "1"),
    }
