"""Two `sluice serve` processes sharing Postgres and Redis enforce one set of keys and limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.harness import config_toml
from tests.processes import ADMIN, ServeProcess, serve_processes, tenant_key

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


async def _chat(client: httpx.AsyncClient, proc: ServeProcess, key: str) -> httpx.Response:
    return await client.post(f"{proc.base_url}/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})


async def test_rpm_limit_of_10_holds_across_two_processes(tmp_path: Path, database_url: str, redis_url: str) -> None:
    # Redis is healthy here, so no admission may take the fail-open path: a generous admission timeout keeps
    # CPU stalls on a loaded 2-core CI machine from being mistaken for a Redis outage.
    env = {"SLUICE_ADMISSION_TIMEOUT_MS": "5000"}
    with serve_processes(
        tmp_path, config_toml(), count=2, database_url=database_url, redis_url=redis_url, extra_env=env
    ) as procs:
        _, _, key = await tenant_key(procs[0].base, rpm=10)
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(*(_chat(client, procs[i % 2], key) for i in range(30)))
            metrics = [(await client.get(f"{proc.base}/metrics")).text for proc in procs]
    assert not any('sluice_quota_fail_open_total{kind="rpm"}' in text for text in metrics)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(response.headers["retry-after"]) <= 60
        else:
            assert int(response.headers["x-ratelimit-remaining-requests"]) >= 0


async def test_key_revoked_through_one_process_is_refused_by_the_other_within_one_second(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    with serve_processes(tmp_path, config_toml(), count=2, database_url=database_url, redis_url=redis_url) as procs:
        _, key_id, key = await tenant_key(procs[0].base)
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await _chat(client, procs[1], key)).status_code == 200  # warm P2's auth cache
            revoke = await client.delete(f"{procs[0].base}/admin/keys/{key_id}", headers=ADMIN)
            assert revoke.status_code == 200
            revoked_at = time.monotonic()
            refused_after = None
            while time.monotonic() - revoked_at < 3:
                if (await _chat(client, procs[1], key)).status_code == 401:
                    refused_after = time.monotonic() - revoked_at
                    break
                await asyncio.sleep(0.05)
            assert refused_after is not None and refused_after <= 1.0, refused_after
            for _ in range(5):
                assert (await _chat(client, procs[1], key)).status_code == 401
