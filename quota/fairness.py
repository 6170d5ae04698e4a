"""Stage 6, queue: hold a request until its upstream deployment has a free slot, granting slots across
tenants by start-time fair queuing on tokens, with the capacity and the queue shared by every process in Redis.

1. `FairQueue.slot` names the attempt (`member`: request id + random suffix) and runs `lua/queue_enqueue.lua`.
   The script sweeps expired slots and waiting entries, tags the request (S = max(V, F_last[tenant]),
   F = S + cost/weight) and grants it in that same round trip when a slot is free; else it refuses at once
   when the tenant already has `max_queued` waiting (`concurrency`), else it adds the request to the one
   waiting set of the deployment, ordered by (priority tier, F, arrival).
2. Whoever frees a slot (`lua/queue_release.lua`), and every other script after its sweep, grants the heads
   of the waiting set on behalf of their waiters, advances V to the granted S and publishes the granted
   members on the deployment's channel. A granted slot expires after `stale_s` until its waiter claims it.
3. A waiter sleeps until `listen` (run by the app's supervisor, one subscriber per process) delivers its
   grant, or until its backstop poll: `poll_s`, doubling up to `max_poll_s`, or up to `stale_s` / 4 while
   the subscription is up (then polls only keep the entry alive). Either way it runs
   `lua/queue_poll.lua`, which claims the slot (extends it to `lease_s`) or refreshes its waiting entry, so
   an entry whose process died expires after `stale_s` and never blocks the head for long.
4. Past its deadline a waiter removes its entry and raises `queue`; a cancelled one removes it too. The
   slot is released on every exit path of the `async with`; a holder that died loses it after `lease_s`.
5. When Redis cannot answer within `timeout_s`, the request fails open onto a per-process FIFO of
   ⌈capacity / processes⌉ slots (RELIABILITY §6.2), reported through `on_fail_open("queue")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Final, Literal, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from quota.errors import QuotaExceededError
from quota.health import RedisHealth
from quota.types import QuotaKind

PREFIX: Final = "sluice"
MAX_PRIORITY: Final = 99
"""Priorities run from -99 to 99; higher is granted first, whatever the finish tags."""

_T = TypeVar("_T")
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_GRANTED, _WAITING, _TENANT_FULL = 1, 0, 2
_DAY_MS = 86_400_000
_SEED_HOLD_S = 1.0  # the hold time assumed for Retry-After until a slot has been held and released here
_LISTEN_BACKOFF_S = (0.05, 1.0)
_WHITESPACE = re.compile(r"\s")  # members travel space-separated in wake messages


def deployment_keys(deployment: str) -> list[str]:
    """The seven keys of one deployment's queue, in the order `lua/queue_common.lua` expects."""
    base = f"{PREFIX}:{{d:{deployment}}}:fq"
    return [f"{base}:{name}" for name in ("wait", "wexp", "meta", "qlen", "inf", "clock", "flast")]


def wake_channel(deployment: str) -> str:
    return f"{PREFIX}:{{d:{deployment}}}:fq:wake"


def _script(client: aioredis.Redis, name: str) -> AsyncScript:
    # Redis has no include: each operation is the shared part followed by its own, registered as one script.
    lua = resources.files("quota").joinpath("lua")
    return client.register_script(lua.joinpath("queue_common.lua").read_text() + lua.joinpath(name).read_text())


class FairQueue:
    """The fair queue in front of one upstream deployment of `capacity` concurrent calls."""

    def __init__(
        self,
        client: aioredis.Redis,
        deployment: str,
        capacity: int,
        *,
        lease_s: float = 600,
        poll_s: float = 0.005,
        max_poll_s: float = 0.1,
        stale_s: float = 2.0,
        timeout_s: float = 0.1,
        max_calls: int = 32,
        processes: Callable[[], int] = lambda: 1,
        on_depth: Callable[[str, int], None] = lambda deployment, depth: None,
        on_wait: Callable[[str, float], None] = lambda tenant, seconds: None,
        on_fail_open: Callable[[QuotaKind], None] = lambda kind: None,
        health: RedisHealth | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity of deployment {deployment!r} must be at least 1, not {capacity}")
        self.deployment = deployment
        self.capacity = capacity
        self._client = client
        self._keys = deployment_keys(deployment)
        self._channel = wake_channel(deployment)
        self._enqueue = _script(client, "queue_enqueue.lua")
        self._poll = _script(client, "queue_poll.lua")
        self._release = _script(client, "queue_release.lua")
        self._lease_ms = int(lease_s * 1000)
        self._claim_ms = int(stale_s * 1000)
        self._poll_s = poll_s
        self._max_poll_s = max(poll_s, max_poll_s)
        self._timeout_s = timeout_s
        self._calls = asyncio.Semaphore(max_calls)
        self._processes = processes
        self._on_depth = on_depth
        self._on_wait = on_wait
        self._on_fail_open = on_fail_open
        self._grants: dict[str, asyncio.Future[None]] = {}
        self._subscribed = False
        self._hold_s = _SEED_HOLD_S
        self._local = _LocalSlots()
        self._health = health

    def slot(
        self,
        *,
        tenant_id: str,
        request_id: str,
        weight: int,
        cost: int,
        priority: int = 0,
        deadline_s: float,
        max_queued: int | None,
    ) -> AbstractAsyncContextManager[float]:
        """Wait for a slot of this deployment; the context yields the seconds waited and releases the slot.

        Args:
            tenant_id: whose share the request is charged to.
            request_id: for operators reading Redis; need not be unique.
            weight: the tenant's weight (≥ 1); backlogged tenants get slots in proportion to it.
            cost: estimated tokens (prompt + max completion); fairness is in tokens, not requests.
            priority: -99 … 99; a higher tier is granted before any lower one.
            deadline_s: the longest wait; past it `QuotaExceededError("queue")`.
            max_queued: waiting requests the tenant may have here; past it `QuotaExceededError("concurrency")`
                at once. `None`: no cap.
        """
        if weight < 1 or cost < 0:
            raise ValueError(f"weight must be ≥ 1 and cost ≥ 0, not weight={weight} cost={cost}")
        if abs(priority) > MAX_PRIORITY:
            raise ValueError(f"priority must be within ±{MAX_PRIORITY}, not {priority}")
        ticket = _Ticket(
            member=f"{_WHITESPACE.sub('_', request_id)}:{secrets.token_hex(4)}",
            tenant_id=tenant_id,
            inc=-(-cost * 1000 // weight),  # ceil: a request never costs less than its share
            tier=MAX_PRIORITY - priority,
            deadline_s=deadline_s,
            max_queued=max_queued,
        )
        return self._slot(ticket)

    @contextlib.asynccontextmanager
    async def _slot(self, ticket: _Ticket) -> AsyncIterator[float]:
        started = time.monotonic()
        in_redis = await self._acquire(ticket, started + ticket.deadline_s)
        granted = time.monotonic()
        waited = granted - started
        self._on_wait(ticket.tenant_id, waited)
        try:
            yield waited
        finally:
            self._hold_s = 0.8 * self._hold_s + 0.2 * (time.monotonic() - granted)
            if in_redis:
                await asyncio.shield(self._leave(ticket.member))
            else:
                await asyncio.shield(self._local.release())

    async def queue_depth(self) -> int:
        """Requests waiting for this deployment, across all processes (entries not yet swept included)."""
        return int(await self._call(lambda: self._client.zcard(self._keys[0])))

    async def listen(self) -> None:
        """Deliver grant wakes to this process's waiters until cancelled; run it under the app's supervisor.

        Without it waiters still get their slots, but learn of them only at their backstop polls.
        """
        backoff = _LISTEN_BACKOFF_S[0]
        while True:
            pubsub = self._client.pubsub()
            try:
                await _redis(pubsub.subscribe(self._channel), self._timeout_s)
                backoff = _LISTEN_BACKOFF_S[0]
                while True:
                    message = await _redis(pubsub.get_message(timeout=1.0), None)
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
                    elif message is not None and message["type"] == "subscribe":
                        self._subscribed = True
                        # Grants published while we were not subscribed are lost: have every waiter poll now.
                        self._deliver(" ".join(self._grants).encode())
            except _REDIS_ERRORS:
                self._subscribed = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _LISTEN_BACKOFF_S[1])
            finally:
                self._subscribed = False
                with contextlib.suppress(*_REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis-py 8.2

    # --- acquiring ----------------------------------------------------------------------------

    async def _acquire(self, ticket: _Ticket, deadline: float) -> bool:
        """Hold a slot in Redis (True) or, with Redis unreachable, a local one (False); else raise."""
        if self._health is not None and not self._health.up:
            await self._acquire_locally(ticket, deadline)  # known down: do not pay a timeout to learn it again
            return False
        # Registered before the enqueue, so a grant published before the reply arrives is not missed.
        self._grants[ticket.member] = asyncio.get_running_loop().create_future()
        try:
            args = [*self._args(ticket, deadline), _or_minus_one(ticket.max_queued), self._lease_ms + _DAY_MS]
            status, depth, waiting = await self._run(self._enqueue, args)
            self._on_depth(self.deployment, depth)
            if status == _TENANT_FULL:
                raise QuotaExceededError(
                    "concurrency",
                    f"Too many requests of tenant `{ticket.tenant_id}` waiting for deployment `{self.deployment}`: "
                    f"{waiting} queued (limit {ticket.max_queued}).",
                    self._retry_after(depth),
                )
            if status != _GRANTED:
                await self._wait(ticket, deadline)
        except _REDIS_ERRORS:
            if self._health is not None:
                self._health.failed()
            # The entry may exist (the reply was lost, not the call): remove it, best effort, then go local.
            await asyncio.shield(self._leave_quietly(ticket.member))
            await self._acquire_locally(ticket, deadline)
            return False
        except asyncio.CancelledError:
            # The entry, or a slot granted meanwhile, must not outlive the request.
            await asyncio.shield(self._leave_quietly(ticket.member))
            raise
        finally:
            del self._grants[ticket.member]
        return True

    async def _wait(self, ticket: _Ticket, deadline: float) -> None:
        interval = self._poll_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                depth = await self._leave_quietly(ticket.member)
                self._on_wait(ticket.tenant_id, ticket.deadline_s)
                raise QuotaExceededError(
                    "queue",
                    f"Waited {ticket.deadline_s:g} s for deployment `{self.deployment}` (capacity {self.capacity}) "
                    f"without a free slot; {depth} requests still waiting.",
                    self._retry_after(depth),
                )
            grant = self._grants[ticket.member]
            await asyncio.wait({grant}, timeout=min(interval, remaining))
            if grant.done():
                self._grants[ticket.member] = asyncio.get_running_loop().create_future()
            status, depth = await self._run(self._poll, self._args(ticket, deadline))
            self._on_depth(self.deployment, depth)
            if status == _GRANTED:
                return
            # With the wake subscription up, polls only keep the entry alive and catch a grant published while
            # the subscriber was reconnecting (it makes every waiter poll once it is back): a few per `stale_s`.
            ceiling = self._claim_ms / 4000 if self._subscribed else self._max_poll_s
            interval = min(interval * 2, max(ceiling, self._poll_s))

    async def _acquire_locally(self, ticket: _Ticket, deadline: float) -> None:
        self._on_fail_open("queue")
        # Read per request: the number of live processes changes, and so does this process's share.
        limit = math.ceil(self.capacity / max(1, self._processes()))
        outcome = await self._local.acquire(limit, ticket.tenant_id, ticket.max_queued, deadline)
        if outcome == "tenant_full":
            raise QuotaExceededError(
                "concurrency",
                f"Too many requests of tenant `{ticket.tenant_id}` waiting for deployment `{self.deployment}`: "
                f"limit {ticket.max_queued} queued (local fallback while Redis is unreachable).",
                self._retry_after(self._local.waiting),
            )
        if outcome == "deadline":
            raise QuotaExceededError(
                "queue",
                f"Waited {ticket.deadline_s:g} s for deployment `{self.deployment}` without a free slot "
                f"(local fallback while Redis is unreachable: {limit} slots in this process).",
                self._retry_after(self._local.waiting),
            )

    def _args(self, ticket: _Ticket, deadline: float) -> list[int | str]:
        # A waiting entry lives until the deadline (plus a poll, for its waiter to remove it itself), or
        # until its waiter stops refreshing it: then it cannot block the head of the queue for long.
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        wait_ttl_ms = min(self._claim_ms, remaining_ms + int(self._max_poll_s * 1000) + 1)
        return [
            *self._common_args(ticket.member),
            ticket.tenant_id,
            ticket.inc,
            ticket.tier,
            self._lease_ms,
            wait_ttl_ms,
        ]

    def _common_args(self, member: str) -> list[int | str]:
        return [self._channel, self.capacity, self._claim_ms, member]

    async def _run(self, script: AsyncScript, args: list[int | str]) -> list[int]:
        result = await self._call(lambda: script(keys=self._keys, args=args))
        return [int(value) for value in result]

    # --- leaving ------------------------------------------------------------------------------

    async def _leave(self, member: str) -> None:
        for attempt in range(3):
            if await self._leave_quietly(member) is not None:
                return
            await asyncio.sleep(0.05 * (attempt + 1))
        # Still unreachable: the slot expires after `lease_s`, as a dead holder's would.

    async def _leave_quietly(self, member: str) -> int | None:
        """Release the member's slot or waiting entry; the depth left, or None when Redis did not answer."""
        try:
            depth = int(await self._call(lambda: self._release(keys=self._keys, args=self._common_args(member))))
        except _REDIS_ERRORS:
            return None
        self._on_depth(self.deployment, depth)
        return depth

    # --- helpers ------------------------------------------------------------------------------

    async def _call(self, call: Callable[[], Awaitable[_T]]) -> _T:
        # Every waiter polls: without a bound, a flood would take every connection of the pool the limiter
        # and the cache share, and redis-py refuses the next call (`MaxConnectionsError`) instead of waiting.
        # The wait for a turn is local and not part of `timeout_s`, which bounds Redis.
        async with self._calls:
            return await _redis(call(), self._timeout_s)

    def _deliver(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        for member in text.split():
            grant = self._grants.get(member)
            if grant is not None and not grant.done():
                grant.set_result(None)

    def _retry_after(self, depth: int | None) -> float:
        """Seconds until the requests now waiting have drained, at the hold time observed in this process."""
        return max(0.05, round(self._hold_s * ((depth or 0) + 1) / self.capacity, 3))


async def _redis(call: Awaitable[_T], timeout_s: float | None) -> _T:
    """Await a Redis call within `timeout_s`, never losing a cancellation that arrives meanwhile.

    redis-py 8 writes commands through `asyncio.wait_for`, which on Python 3.11 returns the result and drops a
    cancellation that lands as the reply arrives (CPython gh-86296). A request cancelled there would go on
    to hold or wait for a slot nobody is left to release; so the cancellation is raised here instead.
    """
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    async with asyncio.timeout(timeout_s):
        result = await call
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError
    return result


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else value


class _Ticket(msgspec.Struct, frozen=True, kw_only=True):
    member: str
    tenant_id: str
    inc: int
    """F − S in milli-tokens per unit of weight."""
    tier: int
    """0 is the highest priority: tiers sort ascending in the waiting set."""
    deadline_s: float
    max_queued: int | None


class _LocalSlots:
    """The fallback while Redis is unreachable: this process's share of the capacity, first come first served."""

    def __init__(self) -> None:
        self._held = 0
        self._waiting: Counter[str] = Counter()
        self._changed = asyncio.Condition()

    @property
    def waiting(self) -> int:
        return self._waiting.total()

    async def acquire(
        self, limit: int, tenant: str, max_queued: int | None, deadline: float
    ) -> Literal["held", "tenant_full", "deadline"]:
        async with self._changed:
            if self._held < limit:
                self._held += 1
                return "held"
            if max_queued is not None and self._waiting[tenant] >= max_queued:
                return "tenant_full"
            self._waiting[tenant] += 1
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._changed.wait_for(lambda: self._held < limit)
            except TimeoutError:
                return "deadline"
            finally:
                self._waiting[tenant] -= 1
                if self._waiting[tenant] <= 0:
                    del self._waiting[tenant]
            self._held += 1
            return "held"

    async def release(self) -> None:
        async with self._changed:
            self._held -= 1
            # All, not one: a notified waiter whose deadline fires at the same moment would swallow the wake.
            self._changed.notify_all()
