"""Key roll and expiry across two `sluice serve` processes, and `sluice keys roll` itself (RELIABILITY T28).

The processes trust cached keys for 3 s (`SLUICE_AUTH_CACHE_TTL_S`), as T28 sets it; revocation within
one second is covered by `test_two_processes.py`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.harness import ADMIN_TOKEN, config_toml, file_config, running_gateway
from tests.processes import ServeProcess, serve_processes

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
ENV = {"SLUICE_AUTH_CACHE_TTL_S": "3"}
PROBE_INTERVAL_S = 0.05


async def _tenant_key(base: str, **key: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, headers=ADMIN) as admin:
        tenant = (await admin.post("/admin/tenants", json={"name": "lifecycle"})).json()
        created = await admin.post(f"/admin/tenants/{tenant['id']}/keys", json=key)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def _status(client: httpx.AsyncClient, proc: ServeProcess, key: str) -> int:
    response = await client.post(
        f"{proc.base_url}/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
    )
    return response.status_code


async def _statuses(client: httpx.AsyncClient, procs: list[ServeProcess], key: str) -> list[int]:
    return [await _status(client, proc, key) for proc in procs]


async def _sluice(base: str, *args: str) -> tuple[int, str, str]:
    """Run the `sluice` CLI against the gateway at `base`: (exit code, stdout, stderr)."""
    env = {**os.environ, "SLUICE_URL": base, "SLUICE_ADMIN_TOKEN": ADMIN_TOKEN}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode is not None
    return child.returncode, stdout.decode(), stderr.decode()


async def _refused_everywhere_by(
    client: httpx.AsyncClient, procs: list[ServeProcess], key: str, deadline: dt.datetime
) -> bool:
    """Probe every process until each refuses `key` (True), or until `deadline` passes (False)."""
    pending = list(procs)
    while pending and dt.datetime.now(dt.UTC) <= deadline:
        pending = [proc for proc in pending if await _status(client, proc, key) != 401]
        if pending:
            await asyncio.sleep(PROBE_INTERVAL_S)
    return not pending


async def test_rolled_key_with_five_second_overlap_leaves_both_keys_working_then_only_the_new_one(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    with serve_processes(
        tmp_path, config_toml(), count=2, database_url=database_url, redis_url=redis_url, extra_env=ENV
    ) as procs:
        old = await _tenant_key(procs[0].base)
        async with httpx.AsyncClient(timeout=10) as client:
            assert await _statuses(client, procs, old["key"]) == [200, 200]  # both processes cache the old key
            roll = await client.post(
                f"{procs[0].base}/admin/keys/{old['id']}/roll", json={"overlap_s": 5}, headers=ADMIN
            )
            assert roll.status_code == 201, roll.text
            rolled = roll.json()
            expires_at = dt.datetime.fromisoformat(rolled["old_key"]["expires_at"])
            during: list[int] = []
            while dt.datetime.now(dt.UTC) < expires_at - dt.timedelta(seconds=0.5):
                during += await _statuses(client, procs, old["key"]) + await _statuses(client, procs, rolled["key"])
                await asyncio.sleep(PROBE_INTERVAL_S)
            assert len(during) >= 4 and set(during) == {200}, during
            refused = await _refused_everywhere_by(client, procs, old["key"], expires_at + dt.timedelta(seconds=1))
            assert refused, "the old key still works 1 s after its overlap ended"
            after = [await _statuses(client, procs, old["key"]) for _ in range(3)]
            assert after == [[401, 401]] * 3
            assert await _statuses(client, procs, rolled["key"]) == [200, 200]


async def test_key_rolled_without_overlap_is_refused_by_the_other_process_within_one_second(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """Shorter than the 3 s cache TTL, so only the announced change can explain the refusal."""
    with serve_processes(
        tmp_path, config_toml(), count=2, database_url=database_url, redis_url=redis_url, extra_env=ENV
    ) as procs:
        old = await _tenant_key(procs[0].base)
        async with httpx.AsyncClient(timeout=10) as client:
            assert await _status(client, procs[1], old["key"]) == 200  # warm P2's cache
            response = await client.post(
                f"{procs[0].base}/admin/keys/{old['id']}/roll", json={"overlap_s": 0}, headers=ADMIN
            )
            assert response.status_code == 201, response.text
            rolled_at = time.monotonic()
            refused_after = None
            while time.monotonic() - rolled_at < 3:
                if await _status(client, procs[1], old["key"]) == 401:
                    refused_after = time.monotonic() - rolled_at
                    break
                await asyncio.sleep(PROBE_INTERVAL_S)
            assert refused_after is not None and refused_after <= 1.0, refused_after
            assert await _status(client, procs[1], response.json()["key"]) == 200


async def test_key_expiring_in_two_seconds_is_refused_by_both_processes_by_three_seconds(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    with serve_processes(
        tmp_path, config_toml(), count=2, database_url=database_url, redis_url=redis_url, extra_env=ENV
    ) as procs:
        created_at = dt.datetime.now(dt.UTC)
        key = await _tenant_key(procs[0].base, expires_at=(created_at + dt.timedelta(seconds=2)).isoformat())
        async with httpx.AsyncClient(timeout=10) as client:
            assert await _statuses(client, procs, key["key"]) == [200, 200]
            refused = await _refused_everywhere_by(client, procs, key["key"], created_at + dt.timedelta(seconds=3))
            assert refused, "a process still accepts the key 3 s after it was made to expire in 2 s"
            assert [await _statuses(client, procs, key["key"]) for _ in range(3)] == [[401, 401]] * 3


@pytest.mark.parametrize(("overlap", "seconds"), [("90", 90), ("30s", 30), ("5m", 300), ("24h", 86_400)])
async def test_cli_keys_roll_reads_the_overlap_in_seconds_minutes_or_hours(
    database_url: str, redis_url: str, overlap: str, seconds: int
) -> None:
    async with running_gateway(database_url, redis_url, file_config()) as gateway:
        tenant_id, _ = await gateway.tenant_key()
        old = (await gateway.admin.get(f"/admin/tenants/{tenant_id}/keys")).json()["data"][0]
        before = dt.datetime.now(dt.UTC)
        code, out, err = await _sluice(gateway.base, "keys", "roll", old["id"], "--overlap", overlap)
        after = dt.datetime.now(dt.UTC)
    assert code == 0, err
    expires_at = dt.datetime.fromisoformat(msgspec.json.decode(out)["old_key"]["expires_at"])
    overlap_delta = dt.timedelta(seconds=seconds)
    assert before + overlap_delta - dt.timedelta(seconds=1) <= expires_at <= after + overlap_delta


@pytest.mark.parametrize("overlap", ["5x", "-5s", "1.5h", "h", ""])
async def test_cli_keys_roll_refuses_an_overlap_that_is_not_a_duration(overlap: str) -> None:
    code, _, err = await _sluice("http://127.0.0.1:9", "keys", "roll", "some-key-id", "--overlap", overlap)
    assert code == 2
    assert "is not a duration" in err
