"""Stages 3 and 8, admit and settle: reserve what a request may consume at every level, atomically,
in one Redis round trip; afterwards replace the reservation by what was really used.

1. `reserve` sends every applicable level (tenant, key, model, end user) to `lua/reserve.lua`, which
   sweeps expired window entries and leaked reservations, checks requests, tokens, budget and
   concurrency at every level, and either takes all of it or nothing. Shadow levels are evaluated
   and reported but never reject. The script reads the Redis clock, so all processes share one.
2. A budget counter Redis has lost (restart without persistence) is rebuilt from the Postgres ledger
   (`SpendSource`) through `lua/seed.lua` before anything is admitted against it.
3. `Reservation.settle` charges the real tokens and cost and releases the concurrency slot, exactly
   once (a marker key), on every exit path; a reservation never settled expires after its TTL.
4. If a Redis round trip takes longer than `timeout_s`, requests and tokens fail open onto per-process
   `limits` windows at ⌈limit / processes⌉ and concurrency onto a local count at ⌈C / processes⌉;
   budgets fail closed (`QuotaBackendError` → 503). Every fallback is reported (RELIABILITY §6.2).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

import msgspec
import redis.asyncio as aioredis
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError

from quota import keys
from quota.errors import QuotaBackendError, QuotaExceededError
from quota.health import RedisHealth
from quota.periods import period_bounds, period_id
from quota.scripts import Scripts, register
from quota.types import (
    Admission,
    BudgetState,
    BudgetTrail,
    Demand,
    Landing,
    Level,
    LevelUsage,
    QuotaKind,
    SpendSnapshot,
    Window,
)

_NANO = Decimal("0.000000001")
_MARKER_TTL_MS = 86_400_000


def to_nano(usd: Decimal) -> int:
    """USD → integer nano-USD, rounded up so reservations and charges never undercount."""
    return int((usd / _NANO).to_integral_value(rounding=ROUND_CEILING))


class SpendSource(Protocol):
    """Where settled spend lives durably (the Postgres ledger); read only to rebuild lost counters."""

    async def spent_usd(self, level: Level, start: dt.datetime, end: dt.datetime) -> SpendSnapshot: ...


class BudgetSpan(msgspec.Struct, frozen=True, kw_only=True):
    """One budget level in its current period: what a budget hold is checked against."""

    level: Level
    period: str
    start: dt.datetime
    end: dt.datetime


class BudgetHolds(Protocol):
    """Budgets enforced without Redis (RELIABILITY §6.2: fail closed onto an atomic reservation in Postgres)."""

    async def hold(self, spans: Sequence[BudgetSpan], request_id: str, usd: Decimal, ttl_s: float) -> int | None:
        """Hold `usd` at every span or nowhere: None when held, else the index of a span it does not fit.
        Raises `QuotaBackendError` when the store is unreachable."""
        ...

    async def settle(self, request_id: str, usd: Decimal) -> None: ...


class Reservation:
    """What one request holds; `settle` exactly once (later calls do nothing)."""

    def __init__(
        self, limiter: Limiter, levels: Sequence[Level], demand: Demand, periods: list[str], admission: Admission
    ) -> None:
        self._limiter = limiter
        self.levels = tuple(levels)
        self.demand = demand
        self._periods = periods
        self.admission = admission
        self._settled = False

    async def settle(self, tokens: int, cost_usd: Decimal) -> None:
        if self._settled:
            return
        self._settled = True
        await self._limiter.settle(self, tokens, cost_usd, self._periods)

    @property
    def trail(self) -> BudgetTrail | None:
        """Where this request's spend is counted, for its usage record (None when no level has a budget)."""
        counters = tuple(
            keys.level_keys(level, period)[3]
            for level, period in zip(self.levels, self._periods, strict=True)
            if level.limits.budget_usd is not None
        )
        if not counters:
            return None
        marker = keys.settled_marker(self.levels[0].tenant_id, self.demand.request_id)
        return BudgetTrail(marker=marker, counters=counters, via_redis=not self.admission.fail_open)

    @property
    def keep_alive_interval_s(self) -> float:
        """How often a long-running request should call `keep_alive`: well inside the reservation TTL."""
        return self._limiter.reservation_ttl_s / 3

    async def keep_alive(self) -> None:
        """Push the reservation's expiry a TTL ahead, so a stream outliving the TTL is not swept as leaked
        (and its slot and reserved USD handed to someone else while it still runs). Best effort."""
        if not self._settled and not self.admission.fail_open:
            await self._limiter.keep_alive(self, self._periods)


class Limiter:
    def __init__(
        self,
        client: aioredis.Redis,
        spend: SpendSource,
        *,
        timeout_s: float = 0.1,
        reservation_ttl_s: float = 600.0,
        processes: Callable[[], int] = lambda: 1,
        on_fail_open: Callable[[QuotaKind], None] = lambda kind: None,
        on_settle_error: Callable[[], None] = lambda: None,
        health: RedisHealth | None = None,
        budget_holds: BudgetHolds | None = None,
        holds_after_s: float = 2.0,
    ) -> None:
        self._client = client
        self.health = health or RedisHealth(client, timeout_s=timeout_s)
        self._holds = budget_holds
        self._holds_after_s = holds_after_s
        self._scripts: Scripts = register(client)
        self._spend = spend
        self._timeout_s = timeout_s
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._processes = processes
        self._on_fail_open = on_fail_open
        self._on_settle_error = on_settle_error
        self._local_requests = MovingWindowRateLimiter(MemoryStorage())
        self._local_tokens = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._local_inflight: Counter[tuple[str, str, str]] = Counter()
        self._retrying: set[asyncio.Task[None]] = set()
        self._held_in_postgres: dict[str, dict[str, tuple[int, str]]] = {}
        """Budget counter (Redis key) → request id → (nano-USD held in Postgres during an outage, its marker)."""
        self._first_hold_ms = 0

    # --- admission -------------------------------------------------------------------------

    async def reserve(self, levels: Sequence[Level], demand: Demand) -> Reservation:
        """Take `demand` at every level or raise `QuotaExceededError` having taken nothing."""
        levels = [level for level in levels if not level.limits.empty]
        now = dt.datetime.now(dt.UTC)
        periods = [period_id(level.limits.budget_period, now) for level in levels]
        if not levels:
            return Reservation(self, levels, demand, periods, Admission())
        if not self.health.up:
            return Reservation(self, levels, demand, periods, await self._reserve_locally(levels, demand, now))
        try:
            if self._held_in_postgres:
                await self._hand_back_outage_spend()
            admission = await self._reserve_in_redis(levels, demand, periods, now)
        except (RedisError, OSError, TimeoutError):
            self.health.failed()
            admission = await self._reserve_locally(levels, demand, now)
        else:
            self.health.succeeded()
        return Reservation(self, levels, demand, periods, admission)

    async def _reserve_in_redis(
        self, levels: list[Level], demand: Demand, periods: list[str], now: dt.datetime
    ) -> Admission:
        redis_keys = [
            key for level, period in zip(levels, periods, strict=True) for key in keys.level_keys(level, period)
        ]
        args: list[int | str] = [demand.request_id, demand.tokens, to_nano(demand.cost_usd), self._ttl_ms, len(levels)]
        for level in levels:
            limits = level.limits
            _, end = period_bounds(limits.budget_period, now)
            args += [
                1 if limits.shadow else 0,
                _or_none(limits.rpm),
                limits.window_s * 1000,
                _or_none(limits.tpm),
                limits.window_s * 1000,
                to_nano(limits.budget_usd) if limits.budget_usd is not None else -1,
                max(1, int((end - now).total_seconds() * 1000)),
                _or_none(limits.max_concurrency),
                1 if limits.budget_usd is not None or limits.max_concurrency is not None else 0,
            ]
        for _ in range(len(levels) + 1):
            async with asyncio.timeout(self._timeout_s):
                result = await self._scripts.reserve(keys=redis_keys, args=args)
            status, index, kind = int(result[0]), int(result[1]), _text(result[2])
            if status == -1:
                await self._seed(levels[index - 1], periods[index - 1], now)
                continue
            shadow = tuple(k for k in _text(result[5]).split(",") if k)
            if status == 0:
                raise _exceeded(levels[index - 1], kind, int(result[4]))
            return _admission(levels, [int(v) for v in result[6:]], int(result[3]), shadow)
        raise QuotaBackendError("budget counters could not be rebuilt")

    async def _seed(self, level: Level, period: str, now: dt.datetime) -> None:
        """Rebuild a lost budget counter: mark it as being rebuilt, read the ledger, then write the sum. Records
        landing in between are reported to the counter meanwhile (lua/reconcile.lua) and judged by seed.lua
        against the read's Postgres snapshot, so the rebuilt counter counts every record exactly once."""
        start, end = period_bounds(level.limits.budget_period, now)
        budget_key = keys.level_keys(level, period)[3]
        ttl_ms = int((end - now).total_seconds() * 1000) + 86_400_000
        async with asyncio.timeout(self._timeout_s):
            token = _text(await self._scripts.seed_begin(keys=[budget_key], args=[secrets.token_hex(8), 60_000]))
        if not token:
            return  # rebuilt by another process meanwhile
        # The ledger read is outside `timeout_s`, which bounds Redis round trips: a sum over a month of usage
        # may take longer, and cutting it off would leave the counter unbuilt and the level at 503 for good.
        spend = await self._spend.spent_usd(level, start, end)
        args: list[int | str] = [token, to_nano(spend.spent_usd), ttl_ms, secrets.token_hex(6), spend.snapshot]
        for request_id, amount in spend.holds:
            args += [request_id, to_nano(amount)]
        seed_keys = [budget_key, keys.late_landings(budget_key), keys.held_amounts(budget_key)]
        async with asyncio.timeout(self._timeout_s):
            await self._scripts.seed(keys=seed_keys, args=args)

    async def reconcile(self, landings: Sequence[Landing]) -> None:
        """Usage records have landed in the ledger: each budget counter they belong to counts each exactly once
        (lua/reconcile.lua). Off the request path (the ledger writer); raises on a Redis failure, for the caller
        to retry: a repeated landing is recognised and skipped."""
        if not landings:
            return
        if not self.health.up:
            raise QuotaBackendError("Redis is unreachable")
        try:
            async with asyncio.timeout(max(self._timeout_s, 5.0)):
                script = self._scripts.reconcile
                pipe = self._client.pipeline(transaction=False)
                pipe.execute_command("SCRIPT", "LOAD", script.source)  # in the same round trip: no NOSCRIPT
                for landing in landings:
                    trail = landing.trail
                    redis_keys = [trail.marker]
                    for counter in trail.counters:
                        redis_keys += [counter, keys.late_landings(counter), keys.held_amounts(counter)]
                    args: list[str | int] = [
                        landing.request_id, landing.xid, landing.cost_nano, int(trail.via_redis), _MARKER_TTL_MS,
                        landing.admitted_at_ms,
                    ]  # fmt: skip
                    pipe.execute_command("EVALSHA", script.sha, len(redis_keys), *redis_keys, *args)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise QuotaBackendError(f"budget reconciliation failed: {type(exc).__name__}") from exc

    async def _reserve_locally(self, levels: list[Level], demand: Demand, now: dt.datetime) -> Admission:
        share = max(1, self._processes())
        enforced = [level for level in levels if not level.limits.shadow]
        for level in enforced:
            self._check_locally(level, demand, share)
        budgeted = [level for level in enforced if level.limits.budget_usd is not None]
        if budgeted:
            await self._hold_budgets(budgeted, demand, now)
        for level in enforced:  # every check passed: take it everywhere
            self._take_locally(level, demand, share)
        return Admission(fail_open=True, budget_held=bool(budgeted))

    async def _hand_back_outage_spend(self) -> None:
        """Back from an outage: Redis may have kept its counters (a partition, not a restart), and they would
        miss what this process spent through Postgres meanwhile. One extra round trip, once per outage; a
        hold not settled yet counts its whole reservation until its record lands (lua/hand_back.lua)."""
        redis_keys: list[str] = []
        args: list[int | str] = [self._first_hold_ms]
        for counter, held in self._held_in_postgres.items():
            redis_keys += [counter, keys.held_amounts(counter)]
            args.append(len(held))
            for request_id, (nano, marker) in held.items():
                args += [request_id, nano, marker]
        async with asyncio.timeout(self._timeout_s):
            await self._scripts.hand_back(keys=redis_keys, args=args)
        self._held_in_postgres.clear()

    async def _hold_budgets(self, levels: list[Level], demand: Demand, now: dt.datetime) -> None:
        """Rate limits fail open, budgets fail closed: onto Postgres, or refused when it is away too."""
        if self._holds is None:
            raise QuotaBackendError("budget enforcement needs Redis, which is unreachable")
        if self.health.down_for_s < self._holds_after_s:
            # Spend admitted through Redis moments ago is still in flight or in the ledger writers' buffers,
            # invisible to Postgres: a blip is refused (retry in a second), only an outage goes to Postgres.
            raise QuotaBackendError("the budget store is unreachable; retry shortly")
        self._on_fail_open("budget")
        spans = []
        for level in levels:
            start, end = period_bounds(level.limits.budget_period, now)
            spans.append(
                BudgetSpan(level=level, period=period_id(level.limits.budget_period, now), start=start, end=end)
            )
        if not self._held_in_postgres:
            # Taken before the first hold is written: a counter seeded at or before it cannot have read this
            # outage's holds from Postgres (hand_back.lua; a tie counts them, erring towards refusing). On the
            # wall clock, against `seeded_at` on the Redis clock: one host's clock in a single-host deployment;
            # elsewhere NTP keeps them within milliseconds.
            self._first_hold_ms = int(time.time() * 1000)
        refused = await self._holds.hold(spans, demand.request_id, demand.cost_usd, self._ttl_ms / 1000)
        if refused is not None:
            level = levels[refused]
            until_end_ms = int((spans[refused].end - now).total_seconds() * 1000)
            raise _exceeded(level, "budget", until_end_ms)
        marker = keys.settled_marker(levels[0].tenant_id, demand.request_id)
        for span in spans:
            counter = keys.level_keys(span.level, span.period)[3]
            self._held_in_postgres.setdefault(counter, {})[demand.request_id] = (to_nano(demand.cost_usd), marker)

    def _check_locally(self, level: Level, demand: Demand, share: int) -> None:
        limits, ident = level.limits, (level.tenant_id, level.scope, level.scope_id)
        if limits.max_concurrency is not None:
            self._on_fail_open("concurrency")
            if self._local_inflight[ident] + 1 > math.ceil(limits.max_concurrency / share):
                raise QuotaExceededError("concurrency", _message(level, "concurrency"), 1.0)
        if limits.rpm is not None:
            self._on_fail_open("rpm")
            if not self._local_requests.test(_local_item(limits.rpm, share, limits.window_s), *ident):
                raise QuotaExceededError("rpm", _message(level, "rpm"), float(limits.window_s))
        if limits.tpm is not None:
            self._on_fail_open("tpm")
            item = _local_item(limits.tpm, share, limits.window_s)
            if not self._local_tokens.test(item, *ident, cost=demand.tokens):
                raise QuotaExceededError("tpm", _message(level, "tpm"), float(limits.window_s))

    def _take_locally(self, level: Level, demand: Demand, share: int) -> None:
        limits, ident = level.limits, (level.tenant_id, level.scope, level.scope_id)
        if limits.rpm is not None:
            self._local_requests.hit(_local_item(limits.rpm, share, limits.window_s), *ident)
        if limits.tpm is not None:
            self._local_tokens.hit(_local_item(limits.tpm, share, limits.window_s), *ident, cost=demand.tokens)
        if limits.max_concurrency is not None:
            self._local_inflight[ident] += 1

    async def usage(self, level: Level) -> LevelUsage:
        """What a level has used of its limits right now (read-only; for usage endpoints, not the hot path)."""
        now = dt.datetime.now(dt.UTC)
        rpm, tpm, tpmv, bud, inf, _ = keys.level_keys(level, period_id(level.limits.budget_period, now))
        window_ms = level.limits.window_s * 1000
        now_ms = int(now.timestamp() * 1000)
        requests = await self._client.zcount(rpm, now_ms - window_ms, "+inf")
        live_ids = await self._client.zrangebyscore(tpm, now_ms - window_ms, "+inf")
        token_map = await self._client.hgetall(tpmv)
        spent, reserved = await self._client.hmget(bud, ["spent", "reserved"])
        inflight = await self._client.zcount(inf, now_ms, "+inf")
        tokens = sum(int(token_map.get(rid, 0)) for rid in live_ids if isinstance(rid, bytes | str))
        return LevelUsage(
            requests=int(requests),
            tokens=tokens,
            spent_usd=Decimal(int(spent or 0)) * _NANO,
            reserved_usd=Decimal(int(reserved or 0)) * _NANO,
            inflight=int(inflight),
        )

    # --- settlement ------------------------------------------------------------------------

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal, periods: list[str]) -> None:
        levels = reservation.levels
        if not any(_needs_settlement(level) for level in levels):
            return  # requests-per-window counts are final at admission: nothing to replace, no round trip
        if reservation.admission.fail_open:
            for level in levels:
                ident = (level.tenant_id, level.scope, level.scope_id)
                if level.limits.max_concurrency is not None and self._local_inflight[ident] > 0:
                    self._local_inflight[ident] -= 1
            if reservation.admission.budget_held and self._holds is not None:
                await self._holds.settle(reservation.demand.request_id, cost_usd)
                for held in self._held_in_postgres.values():
                    if (entry := held.get(reservation.demand.request_id)) is not None:
                        held[reservation.demand.request_id] = (to_nano(cost_usd), entry[1])
            return
        redis_keys = [
            key for level, period in zip(levels, periods, strict=True) for key in keys.level_keys(level, period)
        ]
        redis_keys.append(keys.settled_marker(levels[0].tenant_id, reservation.demand.request_id))
        args: list[int | str] = [
            reservation.demand.request_id,
            tokens,
            to_nano(cost_usd),
            len(levels),
            _MARKER_TTL_MS,
            reservation.admission.admitted_at_ms or 0,
        ]
        args += [1 if level.limits.budget_usd is not None else 0 for level in levels]
        if self.health.up and await self._settle_once(redis_keys, args):
            return
        # Redis did not take it: retry off the response path, so a slow or absent Redis never holds up an answer.
        task = asyncio.get_running_loop().create_task(self._settle_later(redis_keys, args), name="settle-retry")
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _settle_once(self, redis_keys: list[str], args: list[int | str]) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._scripts.settle(keys=redis_keys, args=args)
        except (RedisError, OSError, TimeoutError):
            self._on_settle_error()
            self.health.failed()
            return False
        self.health.succeeded()
        return True

    async def _settle_later(self, redis_keys: list[str], args: list[int | str]) -> None:
        """Retry until Redis takes the settlement, for as long as the reservation itself lives (after that it
        has expired on its own, and the ledger holds the real spend). The script applies a settlement at most
        once (its `settled` marker), so retrying after a lost reply is safe."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ttl_ms / 1000
        delay = 0.2
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if self.health.up and await self._settle_once(redis_keys, args):
                return

    @property
    def reservation_ttl_s(self) -> float:
        return self._ttl_ms / 1000

    async def keep_alive(self, reservation: Reservation, periods: list[str]) -> None:
        redis_keys = []
        for level, period in zip(reservation.levels, periods, strict=True):
            limits = level.limits
            if limits.budget_usd is not None or limits.max_concurrency is not None:
                level_keys = keys.level_keys(level, period)
                redis_keys += [level_keys[4], level_keys[5]]
        if not redis_keys or not self.health.up:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._scripts.keep_alive(keys=redis_keys, args=[reservation.demand.request_id, self._ttl_ms])
        except (RedisError, OSError, TimeoutError):
            self.health.failed()

    async def aclose(self, grace_s: float = 1.0) -> None:
        """Give pending settlement retries `grace_s` to land, then stop them and the health probe."""
        if self._retrying:
            await asyncio.wait(set(self._retrying), timeout=grace_s)
        for task in list(self._retrying):
            task.cancel()
        await asyncio.gather(*self._retrying, return_exceptions=True)
        await self.health.aclose()


def _needs_settlement(level: Level) -> bool:
    limits = level.limits
    return limits.tpm is not None or limits.budget_usd is not None or limits.max_concurrency is not None


def _local_item(limit: int, share: int, window_s: int) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(math.ceil(limit / share), window_s)


def _or_none(value: int | None) -> int:
    return -1 if value is None else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _message(level: Level, kind: str) -> str:
    limits = level.limits
    where = "" if level.scope == "tenant" else f" ({level.scope} limit)"
    if kind == "rpm":
        return f"Rate limit reached for requests: limit {limits.rpm} per {limits.window_s} s{where}."
    if kind == "tpm":
        return f"Rate limit reached for tokens: limit {limits.tpm} per {limits.window_s} s{where}."
    if kind == "budget":
        return f"Budget exhausted: {limits.budget_usd} USD per {limits.budget_period}{where}."
    return f"Too many concurrent requests: limit {limits.max_concurrency}{where}."


def _exceeded(level: Level, kind: str, retry_after_ms: int) -> QuotaExceededError:
    quota_kind: QuotaKind = kind  # type: ignore[assignment]  # the script returns one of the QuotaKind names
    return QuotaExceededError(quota_kind, _message(level, kind), max(0.001, retry_after_ms / 1000))


def _admission(levels: list[Level], stats: list[int], now_ms: int, shadow: tuple[str, ...]) -> Admission:
    """Headers come from the tightest window across levels."""
    requests: Window | None = None
    tokens: Window | None = None
    budget: BudgetState | None = None
    for i, level in enumerate(levels):
        rpm_count, rpm_reset, tpm_sum, tpm_reset = stats[7 * i : 7 * i + 4]
        limits = level.limits
        if limits.rpm is not None and not limits.shadow:
            window = Window(limits.rpm, limits.rpm - rpm_count, rpm_reset / 1000)
            if requests is None or window.remaining < requests.remaining:
                requests = window
        if limits.tpm is not None and not limits.shadow:
            window = Window(limits.tpm, limits.tpm - tpm_sum, tpm_reset / 1000)
            if tokens is None or window.remaining < tokens.remaining:
                tokens = window
        if level.scope == "tenant" and limits.budget_usd is not None and not limits.shadow:
            spent, reserved = stats[7 * i + 4 : 7 * i + 6]
            budget = BudgetState(
                period=limits.budget_period, limit_usd=limits.budget_usd, used_usd=(spent + reserved) * _NANO
            )
    kinds: tuple[QuotaKind, ...] = tuple(k for k in shadow if k in ("rpm", "tpm", "budget", "concurrency"))  # type: ignore[misc]  # narrowed by the filter
    return Admission(requests=requests, tokens=tokens, admitted_at_ms=now_ms, shadow_rejections=kinds, budget=budget)
