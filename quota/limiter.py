"""Stage 3, admit: check and take a request's share of its tenant's limits in one Redis round trip.

1. Every limit that applies (today: the tenant's requests per minute) becomes one sliding log in
   Redis; `lua/admit.lua` checks them all and records the request in all of them, or in none.
2. The script reads the Redis clock, so all gateway processes judge windows by one clock, and it
   returns each window's count and reset so the response headers cost no extra round trip.
3. If Redis does not answer within `timeout_s`, the limiter fails open onto a per-process
   `limits` moving window at ⌈limit / processes⌉ (RELIABILITY §6.2) and reports the fallback.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from quota import keys
from quota.errors import QuotaExceededError
from quota.scripts import register_admit
from tenants.models import TenantContext

_MINUTE_MS = 60_000


class RateWindow(msgspec.Struct, frozen=True):
    limit: int
    remaining: int
    reset_s: float


class Admission(msgspec.Struct, frozen=True):
    """What admission decided, for headers and the ledger."""

    requests: RateWindow | None = None
    admitted_at_ms: int | None = None
    """Redis clock at admission (None when no Redis limit applied)."""
    fail_open: bool = False


class Limiter:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout_s: float = 0.05,
        processes: int = 1,
        on_fail_open: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self._admit_script = register_admit(client)
        self._timeout_s = timeout_s
        self._processes = max(1, processes)
        self._on_fail_open = on_fail_open
        self._local = MovingWindowRateLimiter(MemoryStorage())

    async def admit(self, tenant: TenantContext, request_id: str) -> Admission:
        rpm = tenant.quota.rpm
        if rpm is None:
            return Admission()
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await self._admit_script(
                    keys=[keys.requests_window(tenant.tenant_id)], args=[request_id, rpm, _MINUTE_MS]
                )
        except (RedisError, OSError, TimeoutError):
            return self._admit_locally(tenant, rpm)
        admitted, _failed, now_ms, count, reset_ms = (int(v) for v in result[:5])
        window = RateWindow(limit=rpm, remaining=rpm - count, reset_s=reset_ms / 1000)
        if not admitted:
            raise QuotaExceededError(
                "rpm",
                f"Rate limit reached for requests: limit {rpm} per minute for tenant {tenant.tenant_name!r}; "
                f"retry in {math.ceil(reset_ms / 1000)} s.",
                retry_after=reset_ms / 1000,
            )
        return Admission(requests=window, admitted_at_ms=now_ms)

    def _admit_locally(self, tenant: TenantContext, rpm: int) -> Admission:
        self._on_fail_open("rpm")
        share = math.ceil(rpm / self._processes)
        item = RateLimitItemPerMinute(share)
        if not self._local.hit(item, "tenant", tenant.tenant_id):
            reset_at, _remaining = self._local.get_window_stats(item, "tenant", tenant.tenant_id)
            raise QuotaExceededError(
                "rpm",
                f"Rate limit reached for requests: limit {rpm} per minute for tenant {tenant.tenant_name!r}.",
                retry_after=max(1.0, reset_at - time.time()),
            )
        _reset_at, remaining = self._local.get_window_stats(item, "tenant", tenant.tenant_id)
        return Admission(requests=RateWindow(limit=rpm, remaining=remaining, reset_s=60.0), fail_open=True)
