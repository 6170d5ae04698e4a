"""RELIABILITY T07 (quota issue acceptance 6): a quota change through one process applies on every process
within one second, with no over-admission after that instant."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.harness import config_toml
from tests.processes import ADMIN, serve_processes, tenant_key

BODY = {"model": "small", "messages": [{"role": "user", "content": "probe"}]}


async def test_quota_change_through_one_process_applies_on_the_other_within_one_second(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    env = {"SLUICE_ADMISSION_TIMEOUT_MS": "5000"}
    with serve_processes(
        tmp_path, config_toml(), count=2, database_url=database_url, redis_url=redis_url, extra_env=env
    ) as (p1, p2):
        tenant_id, _, key = await tenant_key(p1.base, rpm=1000)
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):  # warm P2's auth cache with the old quota
                assert (
                    await client.post(f"{p2.base_url}/chat/completions", json=BODY, headers=headers)
                ).status_code == 200
            put = await client.put(f"{p1.base}/admin/tenants/{tenant_id}/quota", json={"rpm": 2}, headers=ADMIN)
            assert put.status_code == 200
            changed_at = time.monotonic()
            applied_after = None
            admitted_after_apply = 0
            while time.monotonic() - changed_at < 3:
                response = await client.post(f"{p2.base_url}/chat/completions", json=BODY, headers=headers)
                new_limit = response.status_code == 429 or response.headers.get("x-ratelimit-limit-requests") == "2"
                if applied_after is None and new_limit:
                    applied_after = time.monotonic() - changed_at
                elif applied_after is not None and response.status_code == 200:
                    admitted_after_apply += 1
                await asyncio.sleep(0.05)
    assert applied_after is not None and applied_after <= 1.0, applied_after
    assert admitted_after_apply == 0, "the window already holds more than 2 requests: nothing more is admitted"
