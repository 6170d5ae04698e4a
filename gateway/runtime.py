"""`Runtime`: the objects `create_app` builds once from configuration and every request uses."""

from __future__ import annotations

import asyncpg
import msgspec
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.accounting.ledger import Ledger
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import Tracer
from gateway.providers.base import Provider
from gateway.settings import Limits, Price
from gateway.supervisor import Supervisor
from quota.fairness import FairQueue
from quota.limiter import Limiter
from tenants.auth import Authenticator
from tenants.store import TenantStore


class ResolvedRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A model name tenants call, bound to the provider that serves it and that provider's price."""

    alias: str
    policy: str
    provider: Provider
    price: Price
    max_context_tokens: int


class Runtime(msgspec.Struct, kw_only=True):
    pool: asyncpg.Pool
    redis: aioredis.Redis
    store: TenantStore
    authenticator: Authenticator
    limiter: Limiter
    supervisor: Supervisor
    queues: dict[str, FairQueue]
    """Fair queue per deployment that has a global `capacity`."""
    ledger: Ledger
    metrics: Metrics
    registry: CollectorRegistry
    multiprocess_dir: str | None = None
    """Set when several worker processes share metrics through prometheus-client's multiprocess mode."""
    routes: dict[str, ResolvedRoute]
    limits: Limits
    created: int
    """Unix time the model list reports as `created`."""
    admin_token: str | None
    log_sample_rate: float = 1.0
    tracer: Tracer | None = None
    """Set only when tracing is on (`SLUICE_TRACING`)."""
    draining: bool = False
    """Set on SIGTERM: `/readyz` and new `/v1` requests answer 503 so traffic moves elsewhere."""
    drain_deadline: float | None = None
    """Loop time after which running streams are ended with a terminal error event."""

    def drain_expired(self, now: float) -> bool:
        return self.drain_deadline is not None and now >= self.drain_deadline
