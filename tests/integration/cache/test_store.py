"""The answer store on real Redis: round trip, tenant isolation, TTL, the per-tenant bound, size limit, failures."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from cache.errors import CacheUnavailableError
from cache.keys import RequestKey, request_key
from cache.store import DecisionCache
from tests.integration.cache.conftest import answer

TTL_S = 60
BOUND = 100


def _key(tenant_id: str, question: str = "capital of France?") -> RequestKey:
    body = {"messages": [{"role": "user", "content": question}], "temperature": 0}
    return request_key(tenant_id, "small", body)


async def _eventually_none(cache: DecisionCache, key: RequestKey) -> None:
    """Poll (no fixed sleep) until `key` is gone; a generous deadline only guards against hanging."""
    async with asyncio.timeout(30):
        while await cache.get(key) is not None:
            await asyncio.sleep(0.05)


async def test_a_stored_answer_comes_back_identical(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    stored = answer()
    assert await cache.put("t1", _key("t1"), stored, TTL_S, BOUND) is True
    got = await cache.get(_key("t1"))
    assert got == stored
    assert got is not None
    assert got.body == stored.body
    assert got.cost_usd == Decimal("0.0042")


async def test_a_missing_answer_is_none(client: aioredis.Redis) -> None:
    assert await DecisionCache(client).get(_key("t1")) is None


async def test_cache_entry_is_never_served_to_another_tenant(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await cache.put("t1", _key("t1"), answer(), TTL_S, BOUND)
    assert await cache.get(_key("t2")) is None
    assert [key async for key in client.scan_iter(match="sluice:cache:{t:t2}*")] == []


async def test_put_refuses_a_key_of_another_tenant(client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        await DecisionCache(client).put("t2", _key("t1"), answer(), TTL_S, BOUND)


async def test_an_answer_expires_after_its_ttl(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await cache.put("t1", _key("t1"), answer(), 0.2, BOUND)
    await _eventually_none(cache, _key("t1"))


async def test_expired_answers_leave_the_tenant_index_on_the_next_put(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await cache.put("t1", _key("t1", "short-lived"), answer(), 0.2, BOUND)
    await _eventually_none(cache, _key("t1", "short-lived"))
    await cache.put("t1", _key("t1", "long-lived"), answer(), TTL_S, BOUND)
    members = await client.zrange(cache.keys.answer_index("t1"), 0, -1)
    assert members == [_key("t1", "long-lived").rpartition(":")[2].encode()]


async def test_the_tenant_index_expires_with_its_last_entry(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await cache.put("t1", _key("t1"), answer(), 0.2, BOUND)
    async with asyncio.timeout(30):
        while await client.exists(cache.keys.answer_index("t1")):
            await asyncio.sleep(0.05)


async def test_the_bound_evicts_the_oldest_answers_of_that_tenant_only(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    others = [_key("t2", f"q{i}") for i in range(5)]
    for key in others:
        await cache.put("t2", key, answer(), TTL_S, 5)
    mine = [_key("t1", f"q{i}") for i in range(8)]
    for key in mine:
        await cache.put("t1", key, answer(), TTL_S, 3)
    assert [await cache.get(key) is not None for key in mine] == [False] * 5 + [True] * 3
    assert [await cache.get(key) is not None for key in others] == [True] * 5
    assert await client.zcard(cache.keys.answer_index("t1")) == 3
    assert await client.zcard(cache.keys.answer_index("t2")) == 5


async def test_storing_the_same_request_again_replaces_it_without_growing_the_index(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await cache.put("t1", _key("t1"), answer("Paris."), TTL_S, BOUND)
    await cache.put("t1", _key("t1"), answer("Paris, France."), TTL_S, BOUND)
    got = await cache.get(_key("t1"))
    assert got is not None
    assert b"Paris, France." in got.body
    assert await client.zcard(cache.keys.answer_index("t1")) == 1


async def test_an_answer_larger_than_the_entry_limit_is_not_stored(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    assert await cache.put("t1", _key("t1"), answer("x" * 2000), TTL_S, BOUND, max_entry_bytes=1000) is False
    assert await cache.get(_key("t1")) is None
    assert await cache.put("t1", _key("t1"), answer("x" * 200), TTL_S, BOUND, max_entry_bytes=1000) is True


async def test_an_entry_this_version_cannot_read_is_a_miss(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await client.set(cache.keys.answer(_key("t1")), b"\x93not an answer")
    assert await cache.get(_key("t1")) is None


async def test_the_put_script_is_loaded_again_after_redis_forgets_it(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await cache.put("t1", _key("t1", "a"), answer(), TTL_S, BOUND)
    await client.script_flush()
    assert await cache.put("t1", _key("t1", "b"), answer(), TTL_S, BOUND) is True


async def test_two_processes_share_answers(client: aioredis.Redis, other_client: aioredis.Redis) -> None:
    stored = answer()
    await DecisionCache(client).put("t1", _key("t1"), stored, TTL_S, BOUND)
    assert await DecisionCache(other_client).get(_key("t1")) == stored


async def test_redis_down_is_one_error_type_for_reads_and_writes(dead_client: aioredis.Redis) -> None:
    cache = DecisionCache(dead_client)
    with pytest.raises(CacheUnavailableError):
        await cache.get(_key("t1"))
    with pytest.raises(CacheUnavailableError):
        await cache.put("t1", _key("t1"), answer(), TTL_S, BOUND)


async def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            DecisionCache(client)
    finally:
        await client.aclose()
