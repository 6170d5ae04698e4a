"""Metric label cardinality stays bounded: distinct end users and junk model names never mint series."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.harness import Gateway


def _series(metrics: str) -> int:
    match = re.search(r"^sluice_metric_series (\d+(?:\.\d+)?)$", metrics, re.MULTILINE)
    assert match, "the live series count is exported"
    return int(float(match.group(1)))


async def test_ten_thousand_users_and_junk_models_keep_the_series_count_under_the_cap(gateway: Gateway) -> None:
    _, key = await gateway.tenant_key(rpm=None)
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, limits=limits, timeout=60) as client:
        assert (
            await client.post(
                "/chat/completions", json={"model": "small", "messages": [{"role": "user", "content": "warm"}]}
            )
        ).status_code == 200
        before = _series((await client.get(f"{gateway.base}/metrics")).text)
        semaphore = asyncio.Semaphore(32)

        async def send(i: int) -> int:
            body = {
                "model": "small" if i % 2 else f"junk-model-{i}",
                "messages": [{"role": "user", "content": "x"}],
                "user": f"end-user-{i}",
                "max_tokens": 1,
            }
            async with semaphore:
                return (await client.post("/chat/completions", json=body)).status_code

        # A first round mints the bounded label combinations (outcomes, `other` model) once…
        await asyncio.gather(*(send(i) for i in range(-100, 0)))
        before = _series((await client.get(f"{gateway.base}/metrics")).text)
        # …then 10,000 more distinct end users and junk model names add no series at all.
        statuses = await asyncio.gather(*(send(i) for i in range(10_000)))
        metrics = (await client.get(f"{gateway.base}/metrics")).text
    assert set(statuses) == {200, 404}
    after = _series(metrics)
    assert "junk-model" not in metrics and "end-user-" not in metrics
    assert after == before, f"series grew from {before} to {after}"
    assert after < 1_000
