"""The budget gauges show what admission saw, so an alert can see a budget running out before it does."""

from __future__ import annotations

import re
from decimal import Decimal

import httpx

from tests.harness import Gateway


def _gauge(metrics: str, name: str, tenant: str) -> float:
    match = re.search(rf'^{name}{{period="day",tenant="{tenant}"}} (\S+)$', metrics, re.MULTILINE)
    assert match, metrics
    return float(match.group(1))


async def test_budget_gauges_track_spend_plus_open_reservations(gateway: Gateway) -> None:
    tenant_id, key = await gateway.tenant_key(budget_usd="2.5", budget_period="day")
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "price me"}], "max_tokens": 50}
    used: list[float] = []
    costs: list[Decimal] = []
    async with httpx.AsyncClient(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}) as client:
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            costs.append(Decimal(response.headers["x-sluice-cost-usd"]))
            metrics = (await client.get("/metrics")).text
            assert _gauge(metrics, "sluice_budget_limit_usd", tenant_id) == 2.5
            used.append(_gauge(metrics, "sluice_budget_used_usd", tenant_id))
    # Identical requests reserve the same amount, so the second admission saw exactly the first one's
    # settled cost on top of its own reservation.
    assert costs[0] > 0
    assert abs(Decimal(str(used[1] - used[0])) - costs[0]) < Decimal("0.000000002")
