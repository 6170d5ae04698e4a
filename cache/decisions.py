"""The routing-decision cache: prompts a route had to escalate to its large model, remembered per tenant.

The router asks `escalated(...)` before trying the small model; a remembered prompt (same fingerprint, see
`cache.keys.prompt_fingerprint`) goes straight to the large one. Entries expire by TTL and a tenant keeps at
most `max_per_tenant` of them (the ones closest to expiry go first), with the same script as answers.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache.errors import CacheUnavailableError
from cache.keys import PREFIX, KeySpace
from cache.scripts import Script


class RoutingDecisions:
    """Escalations by (tenant, route, prompt fingerprint). Redis failures raise `CacheUnavailableError`;
    a router treats that as "not remembered" and tries the small model."""

    def __init__(self, redis: aioredis.Redis, prefix: str = PREFIX, *, max_per_tenant: int = 10_000) -> None:
        if max_per_tenant < 1:
            raise ValueError(f"`max_per_tenant` must be at least 1, got {max_per_tenant}")
        self.redis = redis
        self.keys = KeySpace(prefix)
        self.max_per_tenant = max_per_tenant
        self._put = Script(redis, "put.lua")

    async def remember_escalation(self, tenant_id: str, route: str, fingerprint: str, ttl_s: float) -> None:
        keys = [self.keys.escalation(tenant_id, route, fingerprint), self.keys.escalation_index(tenant_id)]
        member = KeySpace.escalation_member(route, fingerprint)
        ttl_ms = max(1, round(ttl_s * 1000))
        try:
            await self._put(keys, [b"1", ttl_ms, self.max_per_tenant, member])
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(f"remembering an escalation of route `{route}` failed: {exc}") from exc

    async def escalated(self, tenant_id: str, route: str, fingerprint: str) -> bool:
        try:
            return bool(await self.redis.exists(self.keys.escalation(tenant_id, route, fingerprint)))
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(f"reading an escalation of route `{route}` failed: {exc}") from exc
