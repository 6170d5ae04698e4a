"""A stream that outlives the reservation TTL keeps its reservation (the sweep is for crashed processes,
not for long answers): its concurrency slot is not handed to another request while it still runs."""

from __future__ import annotations

import asyncio

import httpx

from tests.harness import file_config, running_gateway

TTL_S = 1.0
_EXTRA = """
[[deployments]]
kind = "simulator"
name = "sim-slow"
model = "slow"
simulator = { token_interval_ms = 100, completion_tokens = 35 }
[[models]]
name = "slow"
route = { policy = "fixed", deployment = "sim-slow" }
"""
_STREAM = {"model": "slow", "messages": [{"role": "user", "content": "take your time"}], "stream": True}
_QUICK = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


async def test_stream_longer_than_the_reservation_ttl_keeps_its_concurrency_slot(
    database_url: str, redis_url: str
) -> None:
    config = file_config(extra=_EXTRA)
    async with running_gateway(database_url, redis_url, config, reservation_ttl_s=TTL_S) as gateway:
        _, key = await gateway.tenant_key(max_concurrency=1)
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=gateway.base, headers=headers, timeout=30) as client:
            statuses: list[int] = []

            async def meanwhile() -> None:
                for _ in range(4):  # at 1.5, 2, 2.5 and 3 s: past the TTL, before the stream ends (~3.5 s)
                    await asyncio.sleep(0.5 if statuses else 1.5)
                    response = await client.post("/v1/chat/completions", json=_QUICK)
                    statuses.append(response.status_code)
                    assert response.status_code == 200 or response.json()["error"]["code"] == (
                        "concurrency_limit_exceeded"
                    )

            async def stream() -> bytes:
                async with client.stream("POST", "/v1/chat/completions", json=_STREAM) as response:
                    assert response.status_code == 200
                    return b"".join([chunk async for chunk in response.aiter_bytes()])

            body, _ = await asyncio.gather(stream(), meanwhile())
            assert body.rstrip().endswith(b"data: [DONE]")
            assert statuses == [429, 429, 429, 429]
            await asyncio.sleep(0.2)  # the stream's settlement runs after its last byte
            assert (await client.post("/v1/chat/completions", json=_QUICK)).status_code == 200
