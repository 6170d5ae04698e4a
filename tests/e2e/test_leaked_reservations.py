"""RELIABILITY T06: what a `kill -9`ed process had reserved expires after the reservation TTL, and from then on
the other process admits every request whose reservation fits — no phantom `budget_exceeded` or
`concurrency_limit_exceeded` — while the budget's spend stays exactly the sum of the usage records.

The TTL is 5 s here instead of the catalogue's 10 s, to keep CI fast; the deadline is TTL + 1 s all the same.
Nothing sweeps expired reservations in the background: the next admission at that level does
(`quota/lua/reserve.lua` step 1), so the surviving process is probed all along, as the catalogue says.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from quota.keys import level_keys
from quota.periods import period_id
from quota.types import Level, LevelLimits
from tests.harness import config_toml
from tests.processes import ADMIN, serve_processes, tenant_key

pytestmark = pytest.mark.slow

TTL_S = 5
BUDGET = Decimal("1.00")
LIMIT = 4
MAX_TOKENS = 100
NANO = Decimal("0.000000001")
PRICE_IN, PRICE_OUT = Decimal(1000), Decimal(2000)
"""USD per million tokens of `long` and `pricey`: a reservation of `MAX_TOKENS` is about $0.21, so the 4 leaked
ones (≈ $0.84) leave no room for another until they expire."""
EXTRA = f"""
[[deployments]]
kind = "simulator"
name = "sim-long"
model = "long"
simulator = {{ token_interval_ms = 500, completion_tokens = {MAX_TOKENS} }}
[[deployments]]
kind = "simulator"
name = "sim-pricey"
model = "pricey"
simulator = {{ latency_ms = 300, completion_tokens = 40 }}
[[models]]
name = "long"
route = {{ policy = "fixed", deployment = "sim-long" }}
[[models]]
name = "pricey"
route = {{ policy = "fixed", deployment = "sim-pricey" }}
[prices.sim-long]
input = {PRICE_IN}.0
output = {PRICE_OUT}.0
[prices.sim-pricey]
input = {PRICE_IN}.0
output = {PRICE_OUT}.0
"""
MESSAGES = [{"role": "user", "content": "tell me a long story"}]
LONG = {"model": "long", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
PRICEY = {"model": "pricey", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
PROBE = {"model": "small", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 16}
SMALL_PRICE_IN, SMALL_PRICE_OUT = Decimal("0.15"), Decimal("0.60")


def _reservation(prompt_tokens: int, price_in: Decimal, price_out: Decimal, max_tokens: int) -> Decimal:
    """What admission reserves: the prompt plus the whole completion limit, at the deployment's price."""
    return (prompt_tokens * price_in + max_tokens * price_out) / 1_000_000


def _cost(response: httpx.Response) -> Decimal:
    return Decimal(response.headers["x-sluice-cost-usd"])


def _code(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    code: str | None = response.json()["error"]["code"]
    return code


class Counters:
    """The tenant level's concurrency ZSET and budget hash, read straight from Redis."""

    def __init__(self, redis: aioredis.Redis, tenant_id: str) -> None:
        level = Level(tenant_id=tenant_id, scope="tenant", scope_id=tenant_id, limits=LevelLimits())
        _, _, _, self.budget_key, self.inflight_key, self.reserved_key = level_keys(
            level, period_id("day", dt.datetime.now(dt.UTC))
        )
        self.redis = redis

    async def inflight(self) -> dict[str, int]:
        """Open reservations: request id → expiry (Redis clock, ms)."""
        # With scores, redis-py returns (member, score) pairs, which its stubs do not say.
        pairs = await self.redis.zrange(self.inflight_key, 0, -1, withscores=True)
        members: list[tuple[bytes, float]] = pairs  # type: ignore[assignment]  # see above
        return {member.decode(): int(score) for member, score in members}

    async def budget(self) -> tuple[Decimal, Decimal]:
        """(spent, reserved) in USD."""
        spent, reserved = await self.redis.hmget(self.budget_key, ["spent", "reserved"])
        return int(spent or 0) * NANO, int(reserved or 0) * NANO

    async def now_ms(self) -> int:
        seconds, microseconds = await self.redis.time()
        return int(seconds) * 1000 + int(microseconds) // 1000


async def test_reservations_of_a_killed_process_expire_within_ttl_and_nothing_is_refused_after(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    # A generous admission timeout: a stalled loop on a loaded 2-core machine must not look like a Redis outage
    # (budgets fail closed, 503, without Redis).
    env = {"SLUICE_RESERVATION_TTL_S": str(TTL_S), "SLUICE_ADMISSION_TIMEOUT_MS": "5000"}
    async with aioredis.Redis.from_url(redis_url) as redis:
        with serve_processes(
            tmp_path, config_toml(extra=EXTRA), count=2, database_url=database_url, redis_url=redis_url, extra_env=env
        ) as (p1, p2):
            tenant_id, _, key = await tenant_key(
                p1.base, budget_usd=str(BUDGET), budget_period="day", max_concurrency=LIMIT
            )
            counters = Counters(redis, tenant_id)
            auth = {"authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(timeout=30, headers=auth) as client:
                # 1. Four long streams through P1 hold every slot and about $0.84 of the budget; then P1 dies.
                async with contextlib.AsyncExitStack() as streams:
                    opened = await asyncio.gather(
                        *(
                            streams.enter_async_context(
                                client.stream("POST", f"{p1.base_url}/chat/completions", json=LONG)
                            )
                            for _ in range(LIMIT)
                        )
                    )
                    assert [r.status_code for r in opened] == [200] * LIMIT
                    # Kept referenced: an abandoned, half-read line iterator is finalized at once, and finalizing it
                    # closes the connection, which would end the stream (and release its reservation) too early.
                    lines = [response.aiter_lines() for response in opened]
                    for line in lines:
                        assert (await anext(line)).startswith("data: ")
                    leaked = await counters.inflight()
                    _, reserved = await counters.budget()
                    assert sorted(leaked) == sorted(r.headers["x-request-id"] for r in opened)
                    p1.process.kill()
                    p1.process.wait()
                    killed_at = time.monotonic()
                for line in lines:  # the responses are closed: this only finalizes the iterators, now, not at random
                    await line.aclose()  # type: ignore[attr-defined]  # httpx line iterators are async generators
                expires_ms = max(leaked.values())
                per_stream = reserved / LIMIT
                assert reserved > BUDGET - per_stream, "the leaked reservations must leave no room for another"

                # 2. P2 is probed until the dead process's slots and dollars are released (bounded: TTL + 3 s).
                spent = Decimal(0)
                admitted = 0
                probes: list[tuple[int, int, str | None]] = []  # (Redis ms before sending, status, error code)
                recovered_after = None
                while time.monotonic() - killed_at < TTL_S + 3:
                    sent_ms = await counters.now_ms()
                    probe = await client.post(f"{p2.base_url}/chat/completions", json=PROBE)
                    probes.append((sent_ms, probe.status_code, _code(probe)))
                    if probe.status_code == 200:
                        spent += _cost(probe)
                        admitted += 1
                    _, reserved = await counters.budget()
                    if not await counters.inflight() and reserved == 0:
                        recovered_after = time.monotonic() - killed_at
                        break
                    await asyncio.sleep(0.1)
                assert recovered_after is not None, f"leaked reservations still held {TTL_S + 3} s after the kill"
                assert recovered_after <= TTL_S + 1, recovered_after
                assert not set(leaked) & set(await redis.hkeys(counters.reserved_key))
                for sent_ms, status, code in probes:
                    if sent_ms >= expires_ms:  # every leaked reservation had expired: nothing may refuse it
                        assert status == 200, (sent_ms - expires_ms, status, code)
                    else:  # still legitimately held: only the concurrency limit may refuse
                        assert status == 200 or (status, code) == (429, "concurrency_limit_exceeded"), (status, code)

                # 3. All four slots are free: four at once are admitted.
                spent_before_batch = spent
                batch = await asyncio.gather(
                    *(client.post(f"{p2.base_url}/chat/completions", json=PRICEY) for _ in range(LIMIT))
                )
                assert [(r.status_code, _code(r)) for r in batch] == [(200, None)] * LIMIT
                prompt_tokens = batch[0].json()["usage"]["prompt_tokens"]
                reservation = _reservation(prompt_tokens, PRICE_IN, PRICE_OUT, MAX_TOKENS)
                assert reservation == per_stream  # same prompt and limit as the leaked streams
                assert spent_before_batch + LIMIT * reservation <= BUDGET  # so each of the four did fit
                spent += sum(_cost(r) for r in batch)
                admitted += LIMIT

                # 4. One at a time until the budget refuses: admitted exactly while spend + reservation fits.
                outcomes: list[tuple[Decimal, int, str | None]] = []
                for _ in range(30):
                    fits = spent + reservation <= BUDGET
                    response = await client.post(f"{p2.base_url}/chat/completions", json=PRICEY)
                    outcomes.append((spent, response.status_code, _code(response)))
                    assert (response.status_code == 200) == fits, outcomes
                    if not fits:
                        assert _code(response) == "budget_exceeded", response.text
                        break
                    spent += _cost(response)
                    admitted += 1
                assert outcomes[-1][1] == 429, f"the budget never ran out: {outcomes}"
                # A request whose smaller reservation still fits is admitted.
                small = await client.post(f"{p2.base_url}/chat/completions", json=PROBE)
                small_reservation = _reservation(
                    small.json()["usage"]["prompt_tokens"], SMALL_PRICE_IN, SMALL_PRICE_OUT, 16
                )
                assert spent + small_reservation <= BUDGET
                assert small.status_code == 200, small.text
                spent += _cost(small)
                admitted += 1

                # 5. Spend in Redis equals the sum of the usage records, to the last digit.
                usage: dict[str, Any] = {}
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    usage = (await client.get(f"{p2.base}/admin/tenants/{tenant_id}/usage", headers=ADMIN)).json()
                    if usage["requests"] == admitted:
                        break
                    await asyncio.sleep(0.1)
                redis_spent, redis_reserved = await counters.budget()
    assert usage["requests"] == admitted, usage
    assert Decimal(usage["cost_usd"]) == spent
    assert (redis_spent, redis_reserved) == (spent, Decimal(0))
    budget = next(q for q in usage["quotas"] if q["kind"] == "budget" and q["scope"] == "tenant")
    assert Decimal(budget["used"]) == spent, budget  # settled spend plus open reservations (none), from Redis
    print(  # the run's shape, for the -s reader
        f"T06: recovered {recovered_after:.2f} s after the kill (TTL {TTL_S} s); {len(probes)} probes "
        f"({sum(s != 200 for _, s, _ in probes)} refused before expiry); {admitted} admitted; spent {spent} USD"
    )
