"""The hot path costs one Redis round trip to admit and one to settle, and none to Postgres (DESIGN §1).

The ledger's background writer adds one script call per landed record (budget reconciliation, sent as one
pipeline per batch), off the request path.

Counted on a private Valkey, so no other test's traffic mixes into its command statistics.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.embedded import EmbeddedValkey
from tests.harness import file_config, running_gateway

REQUESTS = 40


@pytest.fixture(name="private_redis_url")
def fx_private_redis_url() -> Iterator[str]:
    path = Path(tempfile.mkdtemp(prefix="sluice-roundtrips-"))
    server = EmbeddedValkey(path)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


# Commands the quota scripts run inside Redis; Valkey's statistics count them like client commands.
SCRIPT_COMMANDS = {
    "time", "zremrangebyscore", "zcard", "zrange", "zrangebyscore", "zadd", "zrem", "hget", "hset", "hdel",
    "hincrby", "hsetnx", "hmget", "pexpire", "pttl", "set",
}  # fmt: skip


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def test_a_request_with_every_quota_costs_one_redis_round_trip_each_to_admit_and_settle(
    database_url: str, private_redis_url: str
) -> None:
    async with running_gateway(database_url, private_redis_url, file_config()) as gateway:
        _, key = await gateway.tenant_key(rpm=10_000, tpm=10_000_000, budget_usd="100", max_concurrency=50)
        headers = {"authorization": f"Bearer {key}"}
        body = {"model": "small", "messages": [{"role": "user", "content": "count my round trips"}]}
        async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers) as client:
            assert (await client.post("/chat/completions", json=body)).status_code == 200  # warm: seed, auth cache
            await gateway.flush_ledger()
            stats = aioredis.Redis.from_url(private_redis_url)
            before = await _commands(stats)
            for _ in range(REQUESTS):
                assert (await client.post("/chat/completions", json=body)).status_code == 200
            await gateway.flush_ledger()  # every record landed and reconciled: its script calls are all counted
            after = await _commands(stats)
            await stats.aclose()
    delta = {name: calls - before.get(name, 0) for name, calls in after.items() if calls - before.get(name, 0)}
    assert delta.pop("evalsha") == 3 * REQUESTS, "reserve and settle per request, one reconcile per landed record"
    client_commands = {name: calls for name, calls in delta.items() if name not in SCRIPT_COMMANDS}
    # What remains is this test's own INFO call, the 500 ms revocation-epoch poll, the ledger's SCRIPT LOAD
    # (pipelined with its reconcile calls, once per flush) and, on a loaded host, the handshake of a pooled
    # connection opened meanwhile: nothing per request.
    handshake = {"hello", "client|setinfo", "ping"}
    assert set(client_commands) <= {"info", "get", "script|load", *handshake}, client_commands
    assert sum(client_commands.get(name, 0) for name in handshake) <= 12
    assert client_commands.get("script|load", 0) <= 10
    assert client_commands.get("get", 0) <= 10
