"""The limiter on real Redis: exact admission under concurrency, all-or-nothing reservations, settlement,
expiry of leaked reservations, rebuilds after Redis loses its data, and the local fallback.

`SpendSource` is replaced by `Ledger`, a dict of settled spend: it stands for the Postgres ledger read at
the seam the quota package defines. Redis is never faked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from quota.errors import QuotaBackendError, QuotaExceededError
from quota.headers import rate_limit_headers
from quota.keys import level_keys
from quota.limiter import Limiter, Reservation, to_nano
from quota.periods import period_id
from quota.types import Demand, Level, LevelLimits, QuotaKind, Scope, SpendSnapshot

NO_LATER_LANDINGS = "1:1:"
"""A Postgres snapshot that sees every transaction before xid 1: no landing reported later is in the sum."""


class Ledger:
    """`SpendSource` over a dict of settled spend per (tenant, scope, scope id); counts its reads and
    answers after `latency_s` (a large tenant's month of usage records is not summed instantly)."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.spent: dict[tuple[str, str, str], Decimal] = {}
        self.reads = 0
        self.latency_s = latency_s

    def add(self, level: Level, usd: Decimal) -> None:
        ident = (level.tenant_id, level.scope, level.scope_id)
        self.spent[ident] = self.spent.get(ident, Decimal(0)) + usd

    async def spent_usd(self, level: Level, start: dt.datetime, end: dt.datetime) -> SpendSnapshot:
        del start, end  # one period per test
        self.reads += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        spent = self.spent.get((level.tenant_id, level.scope, level.scope_id), Decimal(0))
        return SpendSnapshot(spent_usd=spent, snapshot=NO_LATER_LANDINGS)


@dataclass(frozen=True)
class Counters:
    """One level's counters as Redis holds them (money in nano-USD)."""

    requests: int
    tokens: int
    spent: int
    reserved: int
    inflight: int


@pytest.fixture(name="ledger")
def fx_ledger() -> Ledger:
    return Ledger()


@pytest.fixture(name="limiter")
def fx_limiter(client: aioredis.Redis, ledger: Ledger) -> Limiter:
    return Limiter(client, ledger, timeout_s=5)


def _level(scope: Scope = "tenant", tenant_id: str | None = None, scope_id: str | None = None, **limits: Any) -> Level:
    tenant_id = tenant_id or str(uuid.uuid4())
    return Level(
        tenant_id=tenant_id,
        scope=scope,
        scope_id=scope_id or (tenant_id if scope == "tenant" else str(uuid.uuid4())),
        limits=LevelLimits(**limits),
    )


def _demand(tokens: int = 0, cost: str = "0") -> Demand:
    return Demand(request_id=uuid.uuid4().hex, tokens=tokens, cost_usd=Decimal(cost))


def _period(level: Level) -> str:
    return period_id(level.limits.budget_period, dt.datetime.now(dt.UTC))


async def _counters(client: aioredis.Redis, level: Level) -> Counters:
    rpm, _, tpmv, bud, inf, _ = level_keys(level, _period(level))
    tokens, spent, reserved = await client.hget(tpmv, "__sum"), *await client.hmget(bud, ["spent", "reserved"])
    return Counters(
        requests=await client.zcard(rpm),
        tokens=int(tokens or 0),
        spent=int(spent or 0),
        reserved=int(reserved or 0),
        inflight=await client.zcard(inf),
    )


async def _burst(
    limiter: Limiter, levels: list[Level], demands: list[Demand]
) -> tuple[list[Reservation], list[BaseException]]:
    """All `demands` at once; admitted reservations and the exceptions of the rest."""
    results = await asyncio.gather(*(limiter.reserve(levels, d) for d in demands), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Reservation)]
    failed = [r for r in results if isinstance(r, BaseException)]
    return admitted, failed


async def _redis_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _until_redis_clock(client: aioredis.Redis, at_ms: int, deadline_s: float = 5.0) -> None:
    """Wait until the Redis clock (the one reservations expire by) reaches `at_ms`."""
    async with asyncio.timeout(deadline_s):
        while await _redis_now_ms(client) < at_ms:
            await asyncio.sleep(0.02)


# --- exactly L of M ------------------------------------------------------------------------------


async def test_reserve_admits_exactly_the_rpm_limit_of_many_concurrent_requests(limiter: Limiter) -> None:
    level = _level(rpm=5)
    admitted, failed = await _burst(limiter, [level], [_demand() for _ in range(100)])
    assert len(admitted) == 5
    assert len(failed) == 95
    assert all(isinstance(e, QuotaExceededError) and e.kind == "rpm" for e in failed)
    assert all(isinstance(e, QuotaExceededError) and e.retry_after and 0 < e.retry_after <= 60 for e in failed)
    assert sorted(r.admission.requests.remaining for r in admitted if r.admission.requests) == [0, 1, 2, 3, 4]


async def test_reserve_admits_exactly_the_tokens_that_fit_the_tpm_limit(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    level = _level(tpm=1000)
    admitted, failed = await _burst(limiter, [level], [_demand(tokens=150) for _ in range(60)])
    assert len(admitted) == 6, "⌊1000 / 150⌋"
    assert all(isinstance(e, QuotaExceededError) and e.kind == "tpm" for e in failed)
    assert (await _counters(client, level)).tokens == 900
    assert sorted(r.admission.tokens.remaining for r in admitted if r.admission.tokens) == [
        100,
        250,
        400,
        550,
        700,
        850,
    ]


async def test_reserve_admits_exactly_the_cost_that_fits_the_budget_in_nano_usd(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    level = _level(budget_usd=Decimal("0.001"))
    cost = "0.0001234567"  # 123,456.7 nano-USD, reserved as 123,457
    admitted, failed = await _burst(limiter, [level], [_demand(cost=cost) for _ in range(50)])
    assert len(admitted) == 8, "8 × 123,457 = 987,656 ≤ 1,000,000 < 9 × 123,457"
    assert all(isinstance(e, QuotaExceededError) and e.kind == "budget" for e in failed)
    counters = await _counters(client, level)
    assert (counters.spent, counters.reserved) == (0, 8 * 123_457)


async def test_reserve_admits_exactly_max_concurrency_of_many_concurrent_requests(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    level = _level(max_concurrency=3)
    admitted, failed = await _burst(limiter, [level], [_demand() for _ in range(30)])
    assert len(admitted) == 3
    assert all(isinstance(e, QuotaExceededError) and e.kind == "concurrency" for e in failed)
    assert (await _counters(client, level)).inflight == 3


async def test_settle_frees_a_concurrency_slot_for_the_next_request(limiter: Limiter, client: aioredis.Redis) -> None:
    level = _level(max_concurrency=2)
    first, _ = await limiter.reserve([level], _demand()), await limiter.reserve([level], _demand())
    with pytest.raises(QuotaExceededError):
        await limiter.reserve([level], _demand())
    await first.settle(0, Decimal(0))
    assert (await _counters(client, level)).inflight == 1
    await limiter.reserve([level], _demand())
    assert (await _counters(client, level)).inflight == 2


# --- nothing taken on rejection ------------------------------------------------------------------


async def test_concurrency_rejection_consumes_no_requests_tokens_or_usd(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    """T04: B1–B3 refused while A holds the only slot; C and D then fit in rpm = 3 (not 6)."""
    level = _level(rpm=3, max_concurrency=1, tpm=1000, budget_usd=Decimal("1.00"))
    a = await limiter.reserve([level], _demand(tokens=100, cost="0.01"))
    before = await _counters(client, level)
    for _ in range(3):
        with pytest.raises(QuotaExceededError) as refused:
            await limiter.reserve([level], _demand(tokens=100, cost="0.01"))
        assert refused.value.kind == "concurrency"
    assert await _counters(client, level) == before == Counters(1, 100, 0, to_nano(Decimal("0.01")), 1)
    await a.settle(100, Decimal("0.01"))
    for _ in range(2):  # C, then D
        reservation = await limiter.reserve([level], _demand(tokens=100, cost="0.01"))
        await reservation.settle(100, Decimal("0.01"))
    assert await _counters(client, level) == Counters(3, 300, to_nano(Decimal("0.03")), 0, 0)


@pytest.mark.parametrize(
    ("kind", "limits", "demand"),
    [
        ("concurrency", {"max_concurrency": 1, "rpm": 10, "tpm": 1000, "budget_usd": Decimal(1)}, (10, "0.1")),
        ("rpm", {"rpm": 1, "max_concurrency": 10, "tpm": 1000, "budget_usd": Decimal(1)}, (10, "0.1")),
        ("tpm", {"tpm": 15, "rpm": 10, "max_concurrency": 10, "budget_usd": Decimal(1)}, (10, "0.1")),
        ("budget", {"budget_usd": Decimal("0.15"), "rpm": 10, "tpm": 1000, "max_concurrency": 10}, (10, "0.1")),
    ],
    ids=["concurrency", "rpm", "tpm", "budget"],
)
async def test_rejected_reserve_changes_no_counter(
    limiter: Limiter, client: aioredis.Redis, kind: QuotaKind, limits: dict[str, Any], demand: tuple[int, str]
) -> None:
    level = _level(**limits)
    await limiter.reserve([level], _demand(*demand))
    before = await _counters(client, level)
    with pytest.raises(QuotaExceededError) as refused:
        await limiter.reserve([level], _demand(*demand))
    assert refused.value.kind == kind
    assert await _counters(client, level) == before


async def test_rejection_at_the_key_level_takes_nothing_at_the_tenant_or_user_level(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    tenant = _level(rpm=10, tpm=1000, budget_usd=Decimal(1), max_concurrency=10)
    key = _level("key", tenant.tenant_id, rpm=1)
    user = _level("user", tenant.tenant_id, "user-7", rpm=10, tpm=1000, max_concurrency=10)
    levels = [tenant, key, user]
    await limiter.reserve(levels, _demand(tokens=10, cost="0.1"))
    before = [await _counters(client, level) for level in levels]
    with pytest.raises(QuotaExceededError) as refused:
        await limiter.reserve(levels, _demand(tokens=10, cost="0.1"))
    assert refused.value.kind == "rpm"
    assert "key limit" in refused.value.message
    assert [await _counters(client, level) for level in levels] == before
    assert before[0] == Counters(1, 10, 0, to_nano(Decimal("0.1")), 1)


# --- shadow --------------------------------------------------------------------------------------


async def test_shadow_level_never_rejects_and_reports_what_it_would_have_rejected(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    tenant = _level(rpm=10)
    shadow = _level("key", tenant.tenant_id, rpm=1, max_concurrency=1, shadow=True)
    first = await limiter.reserve([tenant, shadow], _demand())
    second = await limiter.reserve([tenant, shadow], _demand())
    assert first.admission.shadow_rejections == ()
    assert second.admission.shadow_rejections == ("concurrency",), "the first limit it would have hit"
    assert second.admission.requests is not None
    assert second.admission.requests.limit == 10, "headers show enforced limits only"
    assert (await _counters(client, shadow)).requests == 2, "shadow levels still count"


# --- settlement ----------------------------------------------------------------------------------


async def test_settle_replaces_reserved_tokens_and_cost_by_actual_ones(
    limiter: Limiter, client: aioredis.Redis
) -> None:
    level = _level(tpm=10_000, budget_usd=Decimal(1))
    small = await limiter.reserve([level], _demand(tokens=500, cost="0.05"))
    large = await limiter.reserve([level], _demand(tokens=300, cost="0.03"))
    assert await _counters(client, level) == Counters(0, 800, 0, to_nano(Decimal("0.08")), 2)
    await small.settle(120, Decimal("0.0123456789"))  # used less than reserved
    await large.settle(450, Decimal("0.04"))  # used more than reserved: the truth is charged
    assert await _counters(client, level) == Counters(0, 570, 12_345_679 + 40_000_000, 0, 0)


async def test_settle_is_applied_once_however_often_it_is_called(limiter: Limiter, client: aioredis.Redis) -> None:
    level = _level(tpm=10_000, budget_usd=Decimal(1), max_concurrency=5)
    other = await limiter.reserve([level], _demand(tokens=100, cost="0.2"))
    reservation = await limiter.reserve([level], _demand(tokens=100, cost="0.2"))
    await reservation.settle(50, Decimal("0.1"))
    once = await _counters(client, level)
    await reservation.settle(50, Decimal("0.1"))
    # A retried settlement that reaches Redis again (e.g. the first answer was lost): the marker stops it.
    await limiter.settle(reservation, 50, Decimal("0.1"), [_period(level)])
    assert (
        await _counters(client, level) == once == Counters(0, 150, to_nano(Decimal("0.1")), to_nano(Decimal("0.2")), 1)
    )
    await other.settle(0, Decimal(0))


# --- leaked reservations -------------------------------------------------------------------------


async def test_unsettled_reservation_releases_its_slot_and_usd_after_its_ttl(
    client: aioredis.Redis, ledger: Ledger
) -> None:
    """T06 at the script level: a crashed process's reservation comes back within TTL + 1 s."""
    limiter = Limiter(client, ledger, timeout_s=5, reservation_ttl_s=0.5)
    level = _level(budget_usd=Decimal(1), max_concurrency=1)
    leaked = await limiter.reserve([level], _demand(cost="0.6"))  # its process dies: never settled
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.5 + 1.0
    successor: Reservation | None = None
    while successor is None:
        try:
            successor = await limiter.reserve([level], _demand(cost="0.6"))
        except QuotaExceededError as refused:
            assert refused.kind == "concurrency", "no phantom budget rejection"
            assert loop.time() < deadline, "the leaked reservation was not released within TTL + 1 s"
            await asyncio.sleep(0.05)
    assert leaked.admission.admitted_at_ms is not None and successor.admission.admitted_at_ms is not None
    assert successor.admission.admitted_at_ms - leaked.admission.admitted_at_ms >= 500, "not before its TTL"
    assert await _counters(client, level) == Counters(0, 0, 0, to_nano(Decimal("0.6")), 1)


async def test_unsettled_reservation_is_released_after_a_quiet_spell_longer_than_twice_its_ttl(
    client: aioredis.Redis, ledger: Ledger
) -> None:
    """Regression: the open-reservation keys expired after 2 × TTL and took the release with them, so the
    reserved USD stayed counted until the budget period ended."""
    limiter = Limiter(client, ledger, timeout_s=5, reservation_ttl_s=0.2)
    level = _level(budget_usd=Decimal(1), max_concurrency=1)
    leaked = await limiter.reserve([level], _demand(cost="0.6"))
    assert leaked.admission.admitted_at_ms is not None
    await _until_redis_clock(client, leaked.admission.admitted_at_ms + 2 * 200 + 50)
    await limiter.reserve([level], _demand(cost="0.6"))
    assert await _counters(client, level) == Counters(0, 0, 0, to_nano(Decimal("0.6")), 1)


# --- Redis loses its data ------------------------------------------------------------------------
# FLUSHDB, not FLUSHALL: xdist workers may share one server (SLUICE_TEST_REDIS_URL), one DB each.


async def test_budget_counter_is_rebuilt_from_the_ledger_before_any_budgeted_admission_after_a_flush(
    limiter: Limiter, client: aioredis.Redis, ledger: Ledger
) -> None:
    level = _level(budget_usd=Decimal("1.00"))
    first = await limiter.reserve([level], _demand(cost="0.10"))
    await first.settle(0, Decimal("0.10"))
    ledger.add(level, Decimal("0.95"))  # the ledger: this request and others Redis never saw
    await client.flushdb()
    with pytest.raises(QuotaExceededError) as refused:
        await limiter.reserve([level], _demand(cost="0.10"))
    assert refused.value.kind == "budget"
    assert (await _counters(client, level)).spent == to_nano(Decimal("0.95"))
    assert ledger.reads == 2


async def test_budget_counter_is_rebuilt_even_when_the_ledger_answers_slower_than_the_redis_timeout(
    client: aioredis.Redis,
) -> None:
    """Regression: `timeout_s` (meant for Redis) also cut off the ledger read, so the counter was never
    rebuilt and every budgeted request got `QuotaBackendError` for as long as the read stayed slow."""
    ledger = Ledger(latency_s=0.3)
    limiter = Limiter(client, ledger, timeout_s=0.1)
    level = _level(budget_usd=Decimal(1))
    ledger.add(level, Decimal("0.25"))
    await limiter.reserve([level], _demand(cost="0.1"))
    assert await _counters(client, level) == Counters(0, 0, to_nano(Decimal("0.25")), to_nano(Decimal("0.1")), 1)


async def test_reserve_reloads_the_script_after_script_flush(limiter: Limiter, client: aioredis.Redis) -> None:
    source = resources.files("quota").joinpath("lua", "reserve.lua").read_text()
    sha = hashlib.sha1(source.encode()).hexdigest()  # the EVALSHA name redis-py uses
    level = _level(rpm=10)
    await limiter.reserve([level], _demand())
    await client.script_flush()
    assert await client.script_exists(sha) == [False]
    await limiter.reserve([level], _demand())
    assert await client.script_exists(sha) == [True]
    assert (await _counters(client, level)).requests == 2


async def test_settlement_straddling_a_flush_is_applied_at_most_once_and_the_rebuild_equals_the_ledger(
    limiter: Limiter, client: aioredis.Redis, ledger: Ledger
) -> None:
    level = _level(budget_usd=Decimal("1.00"), max_concurrency=5)
    ledger.add(level, Decimal("0.2"))
    straddling = await limiter.reserve([level], _demand(cost="0.5"))
    await client.flushdb()
    ledger.add(level, Decimal("0.3"))  # accounting wrote its usage record before settling
    await straddling.settle(0, Decimal("0.3"))
    await limiter.settle(straddling, 0, Decimal("0.3"), [_period(level)])  # a retry reaching Redis again
    await limiter.reserve([level], _demand(cost="0.1"))
    assert await _counters(client, level) == Counters(0, 0, to_nano(Decimal("0.5")), to_nano(Decimal("0.1")), 1)


async def test_settlement_arriving_after_the_rebuild_is_not_charged_on_top_of_the_ledger(
    limiter: Limiter, client: aioredis.Redis, ledger: Ledger
) -> None:
    """A request admitted before Redis lost its data, settled after the counter was rebuilt from a ledger that
    already holds its record (a retry that outlived an outage): counted once, by the ledger."""
    level = _level(budget_usd=Decimal("1.00"), max_concurrency=5)
    ledger.add(level, Decimal("0.2"))
    straddling = await limiter.reserve([level], _demand(cost="0.5"))
    await asyncio.sleep(0.002)  # admitted before the loss on the Redis clock, which counts milliseconds
    await client.flushdb()
    ledger.add(level, Decimal("0.3"))  # its usage record
    fresh = await limiter.reserve([level], _demand(cost="0.1"))  # rebuilds the counter: 0.5 spent
    await straddling.settle(0, Decimal("0.3"))
    await fresh.settle(0, Decimal("0.05"))  # admitted by the rebuilt counter: charged
    assert await _counters(client, level) == Counters(0, 0, to_nano(Decimal("0.55")), 0, 0)


# --- headers -------------------------------------------------------------------------------------


async def test_rate_limit_windows_count_down_to_zero_and_never_go_negative(limiter: Limiter) -> None:
    tenant = _level(rpm=5, tpm=1000)
    key = _level("key", tenant.tenant_id, rpm=3, tpm=10_000)
    admitted, failed = await _burst(limiter, [tenant, key], [_demand(tokens=300) for _ in range(20)])
    assert len(admitted) == 3
    assert len(failed) == 17
    requests = sorted(r.admission.requests.remaining for r in admitted if r.admission.requests)
    tokens = sorted(r.admission.tokens.remaining for r in admitted if r.admission.tokens)
    assert requests == [0, 1, 2], "the key's window is the tighter one"
    assert tokens == [100, 400, 700], "the tenant's window is the tighter one"
    for reservation in admitted:
        headers = rate_limit_headers(reservation.admission)
        assert int(headers["x-ratelimit-remaining-requests"]) >= 0
        assert int(headers["x-ratelimit-remaining-tokens"]) >= 0
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert reservation.admission.requests is not None
        assert 0 < reservation.admission.requests.reset_s <= 60


# --- keys ----------------------------------------------------------------------------------------


async def test_user_scope_keys_carry_a_hash_never_the_raw_client_id(limiter: Limiter, client: aioredis.Redis) -> None:
    raw = "alice@example.com"
    tenant = _level(rpm=10)
    user = _level("user", tenant.tenant_id, raw, rpm=10, tpm=100, budget_usd=Decimal(1), max_concurrency=2)
    reservation = await limiter.reserve([tenant, user], _demand(tokens=10, cost="0.01"))
    await reservation.settle(5, Decimal("0.001"))
    names = [key.decode() if isinstance(key, bytes) else key for key in await client.keys("*")]
    assert any(":user:" in name for name in names)
    assert not any(raw in name for name in names)
    assert (await _counters(client, user)).spent == to_nano(Decimal("0.001"))


async def test_levels_of_different_tenants_are_counted_apart(limiter: Limiter) -> None:
    first, second = _level(rpm=1), _level(rpm=1)
    await limiter.reserve([first], _demand())
    reservation = await limiter.reserve([second], _demand())
    assert reservation.admission.requests is not None
    assert reservation.admission.requests.remaining == 0


async def test_unlimited_level_makes_no_redis_call(limiter: Limiter, client: aioredis.Redis) -> None:
    before = (await client.info("stats"))["total_commands_processed"]
    reservation = await limiter.reserve([_level()], _demand())
    await reservation.settle(10, Decimal("0.1"))
    after = (await client.info("stats"))["total_commands_processed"]
    assert reservation.admission.requests is None
    assert after - before == 1, "only the INFO call itself"


# --- Redis unreachable ---------------------------------------------------------------------------


@pytest.fixture(name="unreachable")
async def fx_unreachable() -> AsyncIterator[aioredis.Redis]:
    """A client of a port nobody listens on, without reconnect back-off (each call fails at once)."""
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    ("kind", "limits", "tokens", "local_limit"),
    [
        ("rpm", {"rpm": 5}, 1, 3),
        ("tpm", {"tpm": 1000}, 100, 5),
        ("concurrency", {"max_concurrency": 3}, 1, 2),
    ],
    ids=["rpm", "tpm", "concurrency"],
)
async def test_unreachable_redis_fails_open_onto_a_local_limit_of_its_share(
    unreachable: aioredis.Redis,
    ledger: Ledger,
    kind: QuotaKind,
    limits: dict[str, Any],
    tokens: int,
    local_limit: int,
) -> None:
    """⌈L / N⌉ per process with N = 2 live processes; every fallback decision is reported."""
    fallbacks: list[QuotaKind] = []
    limiter = Limiter(unreachable, ledger, timeout_s=0.5, processes=lambda: 2, on_fail_open=fallbacks.append)
    level = _level(**limits)
    admitted: list[Reservation] = []
    for _ in range(8):
        try:
            admitted.append(await limiter.reserve([level], _demand(tokens=tokens)))
        except QuotaExceededError as refused:
            assert refused.kind == kind
    assert len(admitted) == local_limit
    assert all(r.admission.fail_open for r in admitted)
    assert fallbacks == [kind] * 8


async def test_unreachable_redis_local_concurrency_slot_is_freed_on_settle(
    unreachable: aioredis.Redis, ledger: Ledger
) -> None:
    limiter = Limiter(unreachable, ledger, timeout_s=0.5, processes=lambda: 2)
    level = _level(max_concurrency=2)
    held = await limiter.reserve([level], _demand())
    with pytest.raises(QuotaExceededError):
        await limiter.reserve([level], _demand())
    await held.settle(0, Decimal(0))
    assert (await limiter.reserve([level], _demand())).admission.fail_open


async def test_unreachable_redis_fails_budgeted_requests_closed(unreachable: aioredis.Redis, ledger: Ledger) -> None:
    limiter = Limiter(unreachable, ledger, timeout_s=0.5, processes=lambda: 2)
    with pytest.raises(QuotaBackendError):
        await limiter.reserve([_level(rpm=100, budget_usd=Decimal(1))], _demand(cost="0.01"))
    assert ledger.reads == 0
