"""The fair queue with Redis unreachable: it fails open onto this process's share of the capacity,
⌈capacity / processes⌉, first come first served, and reports every fallback (RELIABILITY §6.2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from quota.errors import QuotaExceededError
from quota.fairness import FairQueue
from quota.types import QuotaKind


@pytest.fixture(name="unreachable")
async def fx_unreachable() -> AsyncIterator[aioredis.Redis]:
    """A client of a port nobody listens on, without reconnect back-off (each call fails at once)."""
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


def slot(
    fq: FairQueue, tenant: str = "acme", *, deadline_s: float = 5.0, max_queued: int | None = None
) -> contextlib.AbstractAsyncContextManager[float]:
    return fq.slot(tenant_id=tenant, request_id="r", weight=1, cost=100, deadline_s=deadline_s, max_queued=max_queued)


async def test_unreachable_redis_fails_open_onto_this_process_share_of_the_capacity(
    unreachable: aioredis.Redis,
) -> None:
    """Capacity 5 over 2 live processes: 3 slots here; the 4th waits until its deadline, then `queue`."""
    fallbacks: list[QuotaKind] = []
    fq = FairQueue(unreachable, "dep", 5, timeout_s=0.5, processes=lambda: 2, on_fail_open=fallbacks.append)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            await stack.enter_async_context(slot(fq))
        with pytest.raises(QuotaExceededError) as refused:
            await stack.enter_async_context(slot(fq, deadline_s=0.1))
        assert refused.value.kind == "queue"
        assert "local fallback" in refused.value.message
    assert fallbacks == ["queue"] * 4


async def test_local_slot_released_on_exit_goes_to_the_first_local_waiter(unreachable: aioredis.Redis) -> None:
    fq = FairQueue(unreachable, "dep", 1, timeout_s=0.5)
    order: list[str] = []

    async def one(name: str) -> None:
        async with slot(fq, name):
            order.append(name)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(one(f"r{i}") for i in range(4)))
    assert order == ["r0", "r1", "r2", "r3"]
    async with slot(fq, deadline_s=0) as waited:
        assert waited < 0.5


async def test_local_fallback_keeps_the_per_tenant_queue_cap(unreachable: aioredis.Redis) -> None:
    fallbacks: list[QuotaKind] = []
    fq = FairQueue(unreachable, "dep", 1, timeout_s=0.5, on_fail_open=fallbacks.append)
    async with slot(fq):
        waiter = asyncio.ensure_future(_enter(fq, "a", max_queued=1))
        async with asyncio.timeout(5):
            while len(fallbacks) < 2:  # the waiter queues locally in the step that reports its fallback
                await asyncio.sleep(0.005)
        with pytest.raises(QuotaExceededError) as refused:
            await _enter(fq, "a", max_queued=1)
        assert refused.value.kind == "concurrency"
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


async def _enter(fq: FairQueue, tenant: str, max_queued: int) -> None:
    async with slot(fq, tenant, max_queued=max_queued):
        pass
