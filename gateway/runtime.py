"""`Runtime`: the objects `create_app` builds once from configuration and every request uses."""

from __future__ import annotations

from typing import Literal

import asyncpg
import msgspec
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from cache import CachePolicy, Coalescer, RoutingDecisions
from gateway.accounting.ledger import Ledger
from gateway.feedback import FeedbackStore
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import Tracer
from gateway.providers.base import Provider
from gateway.routing.scorer import Scorer
from gateway.settings import Limits, Price
from gateway.stored_responses import ResponseStore
from gateway.supervisor import Supervisor
from quota.fairness import FairQueue
from quota.limiter import Limiter
from tenants.auth import Authenticator
from tenants.store import TenantStore


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """One deployment a route may call, with its price."""

    provider: Provider
    price: Price
    max_context_tokens: int


class ResolvedRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A model name tenants call, bound to the deployments that may serve it (docs/routing.md).

    `targets`: `fixed` one; `fallback` in the order tried; `cascade` and `scored` (small, large)."""

    alias: str
    policy: Literal["fixed", "fallback", "cascade", "scored"]
    targets: tuple[Target, ...]
    cache: CachePolicy
    threshold: float = 0.0
    """`cascade`: the confidence (with a prior: the combined score) for an early exit; `scored`: the predicted
    chance below which large is called."""
    latency_budget_s: float | None = None
    """`fallback`: no further deployment is tried after this long."""
    remember_escalations_s: float = 0.0
    """`cascade`: how long an escalated prompt goes straight to the large deployment."""
    scorer: Scorer | None = None
    """`scored`: the loaded artifact; `cascade`: the prompt prior, if the route has one."""

    @property
    def max_context_tokens(self) -> int:
        """The largest `max_tokens` every deployment of the route accepts (any of them may answer)."""
        return min(target.max_context_tokens for target in self.targets)

    @property
    def first(self) -> Target:
        return self.targets[0]


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
    answers: Coalescer
    """The decision cache, with single flight for identical requests in flight."""
    decisions: RoutingDecisions
    responses: ResponseStore
    """Stored Responses-API responses (Postgres, tenant-scoped)."""
    feedback: FeedbackStore
    """Ratings of answers (`POST /v1/feedback`)."""
    """Escalations remembered per prompt fingerprint (cascade routes)."""
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
