"""The routing-decision cache on real Redis: escalations remembered per tenant, route and prompt, bounded."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from cache.decisions import RoutingDecisions
from cache.errors import CacheUnavailableError
from cache.keys import prompt_fingerprint

PROMPT = prompt_fingerprint([{"role": "user", "content": "Prove that there are infinitely many primes."}])


async def test_an_escalation_is_remembered_for_the_same_prompt(client: aioredis.Redis) -> None:
    decisions = RoutingDecisions(client)
    assert await decisions.escalated("t1", "cascade", PROMPT) is False
    await decisions.remember_escalation("t1", "cascade", PROMPT, ttl_s=60)
    assert await decisions.escalated("t1", "cascade", PROMPT) is True


async def test_a_near_identical_prompt_goes_straight_to_the_large_model(client: aioredis.Redis) -> None:
    decisions = RoutingDecisions(client)
    await decisions.remember_escalation("t1", "cascade", PROMPT, ttl_s=60)
    near = prompt_fingerprint([{"role": "user", "content": "  prove that there are infinitely many PRIMES  "}])
    assert await decisions.escalated("t1", "cascade", near) is True


async def test_an_escalation_is_scoped_to_its_tenant_and_route(client: aioredis.Redis) -> None:
    decisions = RoutingDecisions(client)
    await decisions.remember_escalation("t1", "cascade", PROMPT, ttl_s=60)
    assert await decisions.escalated("t2", "cascade", PROMPT) is False
    assert await decisions.escalated("t1", "other-route", PROMPT) is False


async def test_an_escalation_is_forgotten_after_its_ttl(client: aioredis.Redis) -> None:
    decisions = RoutingDecisions(client)
    await decisions.remember_escalation("t1", "cascade", PROMPT, ttl_s=0.2)
    async with asyncio.timeout(30):  # guards against a hang only
        while await decisions.escalated("t1", "cascade", PROMPT):
            await asyncio.sleep(0.05)


async def test_the_bound_forgets_the_oldest_escalations_of_that_tenant_only(client: aioredis.Redis) -> None:
    decisions = RoutingDecisions(client, max_per_tenant=2)
    prompts = [prompt_fingerprint([{"role": "user", "content": f"question {i}"}]) for i in range(4)]
    await decisions.remember_escalation("t2", "cascade", prompts[0], ttl_s=60)
    for fingerprint in prompts:
        await decisions.remember_escalation("t1", "cascade", fingerprint, ttl_s=60)
    assert [await decisions.escalated("t1", "cascade", fp) for fp in prompts] == [False, False, True, True]
    assert await decisions.escalated("t2", "cascade", prompts[0]) is True


async def test_redis_down_raises_the_cache_error(dead_client: aioredis.Redis) -> None:
    decisions = RoutingDecisions(dead_client)
    with pytest.raises(CacheUnavailableError):
        await decisions.escalated("t1", "cascade", PROMPT)
    with pytest.raises(CacheUnavailableError):
        await decisions.remember_escalation("t1", "cascade", PROMPT, ttl_s=60)
