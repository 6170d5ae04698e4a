"""Single flight: identical requests in flight at the same time make one upstream call, and all get its answer.

    1 In-process: the first request for a key becomes the local leader (a Future in `_inflight`); later ones
      with the same key await that Future, so each process has at most one request per key talking to Redis.
    2 Across processes: the local leader claims the key's fill lock (`SET NX PX`, pipelined with a read of
      the entry so an answer that just landed is served at once). Winning makes it the `leader`.
    3 Losing makes it wait: it polls the lock and the entry together (backing off 5 ms → 100 ms), until the
      entry appears (`follower`: served from it), the lock disappears without an entry (the leader failed, or
      died and its lease expired) or `wait_s` passes; then it produces the answer itself (`fallback`).
    4 The producer calls `Lease.fulfil(answer)`: local waiters get the answer at once, the entry is written
      (TTL, bound, size limit of the route's policy), and on leaving the `async with` the lock is released,
      which is what wakes the other processes' waiters.

When the leader fails (raises, is cancelled, or leaves without fulfilling), its waiters do not inherit its
exception: each falls back to its own upstream call. A failure may belong to the leader alone (its client
went away, its deadline or reservation ran out), and a waiter's own call fails on its own if the upstream is
really down. Polling rather than pub/sub: only one request per process per key waits on Redis, and a
subscription would need a connection per waiting key or a process-wide listener task.
Redis failures never escape: the lease degrades to in-process coalescing and keeps the error in `cache_error`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal, TypeAlias

import msgspec
from redis.exceptions import RedisError

from cache.errors import CacheUnavailableError
from cache.keys import RequestKey, tenant_of
from cache.policy import CachePolicy
from cache.scripts import Script
from cache.store import CachedAnswer, DecisionCache, decode_answer

Role: TypeAlias = Literal["leader", "follower", "fallback"]
"""`leader`: produce, others wait for you; `follower`: the answer is given; `fallback`: produce, uncoalesced
across processes (the leader failed, the wait timed out, or another leader's answer could not be stored)."""

_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.1


class Lease:
    """One request's part in a single flight; `answer` is set for a follower, else produce and `fulfil`."""

    __slots__ = ("_cache", "_local", "_policy", "_tenant_id", "answer", "cache_error", "key", "role")

    def __init__(
        self,
        cache: DecisionCache,
        tenant_id: str,
        key: RequestKey,
        policy: CachePolicy,
        role: Role,
        local: asyncio.Future[CachedAnswer | None] | None,
    ) -> None:
        self._cache = cache
        self._tenant_id = tenant_id
        self._policy = policy
        self._local = local
        self.key = key
        self.role: Role = role
        self.answer: CachedAnswer | None = None
        self.cache_error: CacheUnavailableError | None = None
        """The last Redis failure met on this lease, for the gateway's log; it never fails the request."""

    async def fulfil(self, answer: CachedAnswer) -> bool:
        """Hand the produced answer to every waiter and store it; True if it was stored (False: too large for
        the policy, Redis down, or this lease is a follower's and has nothing to fulfil)."""
        if self.role == "follower":
            return False
        self.answer = answer
        if self._local is not None and not self._local.done():
            self._local.set_result(answer)
        policy = self._policy
        try:
            return await self._cache.put(
                self._tenant_id,
                self.key,
                answer,
                policy.ttl_s,
                policy.max_entries_per_tenant,
                max_entry_bytes=policy.max_entry_bytes,
            )
        except CacheUnavailableError as exc:
            self.cache_error = exc
            return False


class Coalesced(msgspec.Struct, frozen=True):
    """What `Coalescer.run` returns: the answer, and whether this caller produced it (`leader`, `fallback`)."""

    answer: CachedAnswer
    role: Role


class Coalescer:
    """Single flight over one `DecisionCache`; one per process (its in-process table is per event loop).

    `lease_s` bounds how long a leader holds a key's fill lock (a crashed leader blocks nobody for longer);
    `wait_s` bounds how long a request waits for another's answer before making its own call.
    """

    def __init__(self, cache: DecisionCache, *, lease_s: float = 60.0, wait_s: float = 60.0) -> None:
        self.cache = cache
        self.lease_ms = max(1, round(lease_s * 1000))
        self.wait_s = wait_s
        self._inflight: dict[RequestKey, asyncio.Future[CachedAnswer | None]] = {}
        self._release = Script(cache.redis, "release.lua")

    async def run(
        self, tenant_id: str, key: RequestKey, policy: CachePolicy, produce: Callable[[], Awaitable[CachedAnswer]]
    ) -> Coalesced:
        """`produce` runs unless another request's answer arrives first; its exceptions propagate to this caller."""
        async with self.lease(tenant_id, key, policy) as lease:
            if lease.answer is None:
                await lease.fulfil(await produce())
            assert lease.answer is not None
            return Coalesced(lease.answer, lease.role)

    @asynccontextmanager
    async def lease(self, tenant_id: str, key: RequestKey, policy: CachePolicy) -> AsyncIterator[Lease]:
        """Join the single flight for `key`: inside, either `lease.answer` is set, or produce the answer and
        `await lease.fulfil(answer)`. Leaving without fulfilling (an exception, an uncacheable answer) lets
        the waiters fall back to their own calls."""
        if tenant_of(key) != tenant_id:
            raise ValueError(f"request key `{key}` does not belong to tenant `{tenant_id}`")
        leader = self._inflight.get(key)
        if leader is not None:  # step 1: a request of this process is already on it
            await asyncio.wait([leader], timeout=self.wait_s)  # never cancels the leader's Future
            answer = leader.result() if leader.done() else None
            lease = Lease(self.cache, tenant_id, key, policy, "fallback" if answer is None else "follower", None)
            lease.answer = answer
            yield lease
            return

        local: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = local
        lease = Lease(self.cache, tenant_id, key, policy, "leader", local)
        lock = self.cache.keys.fill_lock(key)
        token = secrets.token_hex(8)
        holds_lock = False
        try:
            try:
                holds_lock, lease.answer = await self._claim(lock, key, token)  # step 2
                if not holds_lock and lease.answer is None:
                    lease.answer = await self._wait(lock, key)  # step 3
            except CacheUnavailableError as exc:
                lease.cache_error = exc  # produce without Redis: still one call per process
            if lease.answer is not None:
                lease.role = "follower"
                local.set_result(lease.answer)
                if holds_lock:  # the answer landed just before our claim: nothing to fill
                    holds_lock = False
                    await self._release_lock(lock, token, lease)
            elif not holds_lock:
                lease.role = "fallback"
            yield lease  # step 4 happens in the caller's block
        finally:
            if not local.done():
                local.set_result(None)  # waiters fall back to their own calls
            if self._inflight.get(key) is local:
                del self._inflight[key]
            if holds_lock:
                await self._release_lock(lock, token, lease)

    async def _claim(self, lock: str, key: RequestKey, token: str) -> tuple[bool, CachedAnswer | None]:
        try:
            async with self.cache.redis.pipeline(transaction=True) as pipe:
                pipe.execute_command("SET", lock, token, "NX", "PX", self.lease_ms)
                pipe.execute_command("GET", self.cache.keys.answer(key))
                won, raw = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(f"claiming the fill lock of `{key}` failed: {exc}") from exc
        return bool(won), None if raw is None else decode_answer(raw)

    async def _wait(self, lock: str, key: RequestKey) -> CachedAnswer | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        delay = _POLL_MIN_S
        entry = self.cache.keys.answer(key)
        while True:
            try:
                # One transaction, lock first: the leader writes the entry before it releases the lock, so a
                # lock seen gone with no entry means there is no answer coming.
                async with self.cache.redis.pipeline(transaction=True) as pipe:
                    pipe.execute_command("EXISTS", lock)
                    pipe.execute_command("GET", entry)
                    locked, raw = await pipe.execute()
            except (RedisError, OSError) as exc:
                raise CacheUnavailableError(f"waiting for the answer of `{key}` failed: {exc}") from exc
            if raw is not None:
                return decode_answer(raw)
            remaining = deadline - loop.time()
            if not locked or remaining <= 0:
                return None
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX_S)

    async def _release_lock(self, lock: str, token: str, lease: Lease) -> None:
        try:
            await self._release([lock], [token])
        except (RedisError, OSError) as exc:  # the lock then expires on its own after `lease_s`
            lease.cache_error = CacheUnavailableError(f"releasing the fill lock `{lock}` failed: {exc}")
