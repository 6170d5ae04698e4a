"""Single flight on real Redis: identical requests in flight make one upstream call, within and across processes,
and nobody waits forever on a leader that failed, died or is slow. Two clients stand for two processes."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio as aioredis

from cache.coalesce import Coalesced, Coalescer
from cache.keys import RequestKey, request_key
from cache.policy import CachePolicy
from cache.store import CachedAnswer, DecisionCache
from tests.integration.cache.conftest import answer

POLICY = CachePolicy(ttl_s=60)
CALLERS = 50


def _key(tenant_id: str = "t1", question: str = "capital of France?") -> RequestKey:
    body = {"messages": [{"role": "user", "content": question}], "temperature": 0}
    return request_key(tenant_id, "small", body)


class Upstream:
    """A stand-in for the upstream call: counts calls, answers once every caller has started (so all of them
    are really in flight together), and fails the first `failures` calls."""

    def __init__(self, callers: int, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures
        self.started = 0
        self.callers = callers
        self.all_started = asyncio.Event()
        if callers <= 1:
            self.all_started.set()
        self.answer = answer()

    def start(self) -> None:
        self.started += 1
        if self.started == self.callers:
            self.all_started.set()

    async def produce(self) -> CachedAnswer:
        self.calls += 1
        async with asyncio.timeout(30):  # guards against a hang only
            await self.all_started.wait()
        if self.calls <= self.failures:
            raise RuntimeError("upstream failed")
        return self.answer


async def _call_all(
    coalescers: list[Coalescer], upstream: Upstream, key: RequestKey
) -> list[Coalesced | BaseException]:
    async def one(coalescer: Coalescer) -> Coalesced:
        upstream.start()
        return await coalescer.run("t1", key, POLICY, upstream.produce)

    async with asyncio.timeout(30):  # guards against a hang only; nothing here is timed
        callers = (one(coalescers[i % len(coalescers)]) for i in range(upstream.callers))
        return await asyncio.gather(*callers, return_exceptions=True)


async def test_fifty_identical_callers_in_two_processes_make_one_upstream_call(
    client: aioredis.Redis, other_client: aioredis.Redis
) -> None:
    upstream = Upstream(CALLERS)
    outcomes = await _call_all(
        [Coalescer(DecisionCache(client)), Coalescer(DecisionCache(other_client))], upstream, _key()
    )
    assert upstream.calls == 1
    assert all(isinstance(outcome, Coalesced) for outcome in outcomes)
    results = [outcome for outcome in outcomes if isinstance(outcome, Coalesced)]
    assert {result.answer.body for result in results} == {upstream.answer.body}
    assert Counter(result.role for result in results) == {"leader": 1, "follower": CALLERS - 1}


async def test_a_leader_that_fails_leaves_no_waiter_hanging(
    client: aioredis.Redis, other_client: aioredis.Redis
) -> None:
    """The leader's exception reaches its own caller only; every waiter makes its own call and gets an answer."""
    upstream = Upstream(CALLERS, failures=1)
    caches = [DecisionCache(client), DecisionCache(other_client)]
    outcomes = await _call_all([Coalescer(cache) for cache in caches], upstream, _key())
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert [str(error) for error in failed] == ["upstream failed"]
    answered = [outcome for outcome in outcomes if isinstance(outcome, Coalesced)]
    assert len(answered) == CALLERS - 1
    assert {result.answer.body for result in answered} == {upstream.answer.body}
    assert await client.exists(caches[0].keys.fill_lock(_key())) == 0


async def test_different_requests_are_not_coalesced(client: aioredis.Redis) -> None:
    coalescer = Coalescer(DecisionCache(client))
    first, second = Upstream(10), Upstream(10)
    await asyncio.gather(
        _call_all([coalescer], first, _key(question="a")), _call_all([coalescer], second, _key(question="b"))
    )
    assert (first.calls, second.calls) == (1, 1)


async def test_a_caller_after_the_fill_gets_the_stored_answer_without_a_call(
    client: aioredis.Redis, other_client: aioredis.Redis
) -> None:
    upstream = Upstream(1)
    await _call_all([Coalescer(DecisionCache(client))], upstream, _key())
    late = await Coalescer(DecisionCache(other_client)).run("t1", _key(), POLICY, upstream.produce)
    assert (late.role, late.answer.body, upstream.calls) == ("follower", upstream.answer.body, 1)


async def test_a_dead_leaders_lock_expires_and_the_waiter_makes_its_own_call(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    await client.set(cache.keys.fill_lock(_key()), b"a-process-that-died", px=300)
    upstream = Upstream(1)
    outcome = await Coalescer(cache).run("t1", _key(), POLICY, upstream.produce)
    assert (outcome.role, upstream.calls) == ("fallback", 1)
    assert await cache.get(_key()) == upstream.answer  # the fallback's answer is stored for the next caller


async def test_a_waiter_stops_waiting_for_a_slow_leader_after_wait_s(client: aioredis.Redis) -> None:
    cache = DecisionCache(client)
    lock = cache.keys.fill_lock(_key())
    await client.set(lock, b"a-slow-process", px=60_000)
    upstream = Upstream(1)
    outcome = await Coalescer(cache, wait_s=0.2).run("t1", _key(), POLICY, upstream.produce)
    assert (outcome.role, upstream.calls) == ("fallback", 1)
    assert await client.get(lock) == b"a-slow-process"  # another leader's lock is never released by us


async def test_leaving_a_lease_without_an_answer_lets_local_waiters_fall_back(client: aioredis.Redis) -> None:
    """A leader whose answer is not cacheable (e.g. a truncated stream) leaves without `fulfil`."""
    coalescer = Coalescer(DecisionCache(client))
    upstream = Upstream(1)
    async with coalescer.lease("t1", _key(), POLICY) as lease:
        assert (lease.role, lease.answer) == ("leader", None)
        waiter = asyncio.create_task(coalescer.run("t1", _key(), POLICY, upstream.produce))
        await asyncio.sleep(0)  # let the waiter join this process's flight
    outcome = await waiter
    assert (outcome.role, upstream.calls) == ("fallback", 1)


async def test_an_answer_too_large_to_store_still_reaches_local_waiters(client: aioredis.Redis) -> None:
    coalescer = Coalescer(DecisionCache(client))
    upstream = Upstream(10)
    tiny = CachePolicy(max_entry_bytes=16)

    async def one() -> Coalesced:
        upstream.start()
        return await coalescer.run("t1", _key(), tiny, upstream.produce)

    outcomes = await asyncio.gather(*(one() for _ in range(10)))
    assert upstream.calls == 1
    assert Counter(outcome.role for outcome in outcomes) == {"leader": 1, "follower": 9}
    assert await coalescer.cache.get(_key()) is None


async def test_with_redis_down_one_process_still_makes_one_call(dead_client: aioredis.Redis) -> None:
    coalescer = Coalescer(DecisionCache(dead_client))
    upstream = Upstream(10)
    outcomes = await _call_all([coalescer], upstream, _key())
    assert upstream.calls == 1
    assert Counter(o.role for o in outcomes if isinstance(o, Coalesced)) == {"fallback": 1, "follower": 9}


async def test_with_redis_down_the_lease_keeps_the_error_instead_of_raising(dead_client: aioredis.Redis) -> None:
    coalescer = Coalescer(DecisionCache(dead_client))
    async with coalescer.lease("t1", _key(), POLICY) as lease:
        assert (lease.role, lease.answer) == ("fallback", None)
        assert lease.cache_error is not None
        assert await lease.fulfil(answer()) is False


async def test_a_lease_refuses_a_key_of_another_tenant(client: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        async with Coalescer(DecisionCache(client)).lease("t2", _key("t1"), POLICY):
            pass
