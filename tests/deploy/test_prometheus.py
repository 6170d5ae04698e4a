"""A real Prometheus scrapes a gateway running 4 worker processes: counts are exact across workers, each
error cause has its own outcome, a fault storm fires the burn-rate alert, and every expression in the rules,
the dashboard and the runbooks is one that Prometheus accepts (issue 5, acceptance 2–4)."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import openai

from tests.deploy.prometheus_server import PrometheusServer, prometheus_scraping
from tests.deploy.promql import RUNBOOKS, dashboard_exprs, rules, runbook_promql
from tests.fakes.upstream import FakeUpstream
from tests.harness import config_toml
from tests.processes import ServeProcess, serve_processes, tenant_key

_MESSAGES = [{"role": "user", "content": "count me"}]


async def _post(client: httpx.AsyncClient, key: str, body: object) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


async def _client_caused_and_ok(proc: ServeProcess, sent: Counter[str]) -> Decimal:
    """Successes and the causes a client brings on itself; returns the sum of the cost headers."""
    _, _, key = await tenant_key(proc.base, "scraped", rpm=10_000)
    _, _, tight_key = await tenant_key(proc.base, "tight", rpm=2)
    _, _, broke_key = await tenant_key(proc.base, "broke", budget_usd="0.000001", budget_period="day")
    sdk = openai.AsyncOpenAI(base_url=proc.base_url, api_key=key, max_retries=0)
    costs = Decimal(0)
    async with sdk:

        async def one_ok() -> Decimal:
            raw = await sdk.chat.completions.with_raw_response.create(model="fake-ok", messages=_MESSAGES)  # type: ignore[arg-type]
            raw.parse()
            return Decimal(raw.headers["x-sluice-cost-usd"])

        for _ in range(5):
            costs += sum(await asyncio.gather(*(one_ok() for _ in range(8))), Decimal(0))
            sent["ok"] += 8
    async with httpx.AsyncClient(base_url=proc.base, timeout=30) as client:
        for _ in range(6):
            assert (await _post(client, key, {"model": "fake-ok", "messages": []})).status_code == 400
        sent["invalid_request"] += 6
        for _ in range(7):
            refused = await _post(client, "sk-sluice-nope", {"model": "fake-ok", "messages": _MESSAGES})
            assert refused.status_code == 401
        sent["auth"] += 7
        for _ in range(3):
            assert (await _post(client, key, {"model": "no-such-model", "messages": _MESSAGES})).status_code == 404
        sent["invalid_request"] += 3  # an unknown model is the caller's mistake, counted with bad requests
        statuses = [(await _post(client, tight_key, {"model": "fake-ok", "messages": _MESSAGES})) for _ in range(5)]
        assert [r.status_code for r in statuses] == [200, 200, 429, 429, 429]
        costs += sum((Decimal(r.headers["x-sluice-cost-usd"]) for r in statuses[:2]), Decimal(0))
        sent["ok"] += 2
        sent["rate_limited"] += 3
        for _ in range(2):
            refused = await _post(client, broke_key, {"model": "fake-ok", "messages": _MESSAGES})
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        sent["budget_exceeded"] += 2
    return costs


async def _fault_storm(proc: ServeProcess, fake: FakeUpstream, sent: Counter[str]) -> None:
    """Upstream failures of every kind, spread over several scrapes so `rate()` sees them rise, and
    streams the client walks away from."""
    _, _, key = await tenant_key(proc.base, "stormy", rpm=10_000)
    async with httpx.AsyncClient(base_url=proc.base, timeout=30) as client:
        for round_ in range(6):
            replies = await asyncio.gather(
                _post(client, key, {"model": "fake-500", "messages": _MESSAGES}),
                _post(client, key, {"model": "fake-503", "messages": _MESSAGES}),
                _post(client, key, {"model": "fake-429", "messages": _MESSAGES}),
                _post(client, key, {"model": "fake-400", "messages": _MESSAGES}),
                *([_post(client, key, {"model": "fake-slow", "messages": _MESSAGES})] if round_ < 2 else []),
            )
            assert [r.status_code for r in replies[:4]] == [502, 502, 502, 400], [r.text for r in replies]
            assert all(r.status_code == 504 for r in replies[4:])
            sent["upstream_error"] += 2
            sent["upstream_rate_limited"] += 1
            sent["upstream_rejected"] += 1
            sent["upstream_timeout"] += len(replies) - 4
            await asyncio.sleep(0.5)
        for _ in range(2):
            body = {"model": "fake-stall-stream", "messages": _MESSAGES, "stream": True}
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
            ) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break  # one chunk, then the client hangs up
            sent["client_disconnected"] += 1
    assert fake.calls["fake-500"] == 6


async def _outcomes(prometheus: PrometheusServer) -> dict[str, float]:
    result = await prometheus.query("sum by (outcome) (sluice_requests_total)")
    return {series["metric"]["outcome"]: float(series["value"][1]) for series in result}


async def test_prometheus_sees_exact_counts_from_four_workers_and_the_storm_fires_the_burn_alert(
    tmp_path: Path, fake: FakeUpstream, database_url: str, redis_url: str
) -> None:
    with serve_processes(
        tmp_path, config_toml(fake.base_url), database_url=database_url, redis_url=redis_url, args=["--workers", "4"]
    ) as (proc,):
        async with prometheus_scraping(tmp_path, f"127.0.0.1:{proc.port}") as prometheus:
            sent: Counter[str] = Counter()
            costs = await _client_caused_and_ok(proc, sent)
            total = sum(sent.values())
            assert await prometheus.wait_for("sum(sluice_requests_total)", total) == total
            assert await _outcomes(prometheus) == {cause: float(n) for cause, n in sent.items()}
            cost = await prometheus.value("sum(sluice_cost_usd_total)")
            assert cost is not None and abs(Decimal(str(cost)) - costs) < Decimal("1e-9"), (cost, costs)
            states = await prometheus.alert_states()
            assert states.get("SluiceAvailabilityBudgetFastBurn") is None, states  # nothing the service did wrong

            await _fault_storm(proc, fake, sent)
            total = sum(sent.values())
            assert await prometheus.wait_for("sum(sluice_requests_total)", total) == total
            assert await _outcomes(prometheus) == {cause: float(n) for cause, n in sent.items()}
            for _ in range(60):
                states = await prometheus.alert_states()
                if states.get("SluiceAvailabilityBudgetFastBurn") == "firing":
                    break
                await asyncio.sleep(0.5)
            assert states.get("SluiceAvailabilityBudgetFastBurn") == "firing", states
            assert states.get("SluiceLatencyBudgetFastBurn") is None, states

            # Every expression an operator would run is accepted by this Prometheus.
            exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
            for path in RUNBOOKS.glob("*.md"):
                exprs += runbook_promql(path.read_text())
            for expr in exprs:
                await prometheus.query(expr)
