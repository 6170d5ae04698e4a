"""`create_app(settings, config)`: the Litestar app — routes, lifespan, and the one error handler.

Parsed configuration becomes runtime objects here, once (providers, prices, routes); the lifespan
opens the Postgres pool, the Redis client and the background tasks, and closes them in reverse order,
flushing the usage ledger last so nothing served goes unrecorded.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from prometheus_client import CollectorRegistry

from cache import Coalescer, DecisionCache, RoutingDecisions
from gateway import drain
from gateway.accounting.budget_holds import PostgresBudgetHolds
from gateway.accounting.ledger import Ledger
from gateway.accounting.spend import LedgerSpend
from gateway.accounting.spool import Spool
from gateway.accounting.tokens import warm_up
from gateway.api.admin import admin_router
from gateway.api.anthropic import count_message_tokens, create_message
from gateway.api.hot_path import HotPath
from gateway.api.middleware import InputLimitsMiddleware, RequestIdMiddleware
from gateway.api.openai import (
    chat_completions,
    create_response,
    delete_response,
    embeddings,
    get_response,
    list_models,
    own_usage,
    rate_answer,
)
from gateway.api.openapi_docs import COMPONENTS, TENANT_SECURITY
from gateway.api.ops import healthz, metrics, readyz
from gateway.api.options_allow import AllowEveryMethod
from gateway.errors import error_body, to_gateway_error
from gateway.feedback import FeedbackStore
from gateway.observability.metrics import LabelBounds, Metrics
from gateway.pipeline.route import build_routes
from gateway.providers.registry import build_providers
from gateway.runtime import Runtime
from gateway.settings import FileConfig, Settings
from gateway.stored_responses import ResponseStore
from gateway.supervisor import Supervisor
from quota.fairness import FairQueue
from quota.health import RedisHealth
from quota.limiter import Limiter
from tenants.auth import Authenticator
from tenants.keys import KeyHasher
from tenants.store import TenantStore

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__version__ = "0.1.0"


def _error_handler(_: Request[None, None, State], exc: Exception) -> Response[bytes]:
    """The one mapping of framework errors (unknown route, 405, 413, validation) to OpenAI error bodies."""
    error = to_gateway_error(exc)
    return Response(error_body(error), status_code=error.status, media_type="application/json", headers=error.headers)


def create_app(
    settings: Settings,
    config: FileConfig,
    environ: Mapping[str, str],
    *,
    multiprocess_dir: str | None = None,
    processes: int = 1,
    drain_on_sigterm: bool = False,
    span_exporter: SpanExporter | None = None,
) -> HotPath:
    """The app; `drain_on_sigterm` chains the graceful drain in front of the server's SIGTERM handler."""
    if settings.database_url is None or settings.redis_url is None:
        raise ValueError("create_app needs database and redis URLs (the CLI starts embedded servers first)")
    database_url, redis_url = settings.database_url, settings.redis_url
    peppers = settings.peppers()
    if not peppers:
        raise ValueError("a key pepper is required (SLUICE_KEY_PEPPER)")
    hasher = KeyHasher(peppers)
    registry = CollectorRegistry(auto_describe=True)
    bounds = LabelBounds(
        (m.name for m in config.models), settings.metrics_max_tenants, settings.metrics_tenants.split(",")
    )
    metrics_ = Metrics(registry, bounds, __version__)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        warm_up()
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10, command_timeout=10)
        # Never shorter than the admission timeout: a connection opened in a burst on a busy host must not
        # fail an admission the timeout would still allow (and trip the fallback without an outage).
        redis_timeout_s = max(2.0, settings.admission_timeout_ms / 1000)
        redis = aioredis.Redis.from_url(
            redis_url,
            socket_connect_timeout=redis_timeout_s,
            socket_timeout=redis_timeout_s,
            health_check_interval=10,
            max_connections=512,
        )
        providers = build_providers(config, environ)
        routes = build_routes(config, providers)
        store = TenantStore(pool)
        authenticator = Authenticator(store, hasher, redis, ttl=settings.auth_cache_ttl_s)
        limiter, queues = _quota_backends(redis, pool, settings, config, metrics_, processes)
        ledger = await _start_ledger(pool, settings, metrics_, limiter)
        supervisor = Supervisor()
        tracer = None
        if span_exporter is not None or settings.tracing != "off":
            from gateway.observability.tracing import Tracer, exporter_for

            tracer = Tracer(span_exporter or exporter_for(settings.tracing))
        runtime = Runtime(
            pool=pool,
            redis=redis,
            store=store,
            authenticator=authenticator,
            limiter=limiter,
            supervisor=supervisor,
            queues=queues,
            ledger=ledger,
            metrics=metrics_,
            registry=registry,
            multiprocess_dir=multiprocess_dir,
            routes=routes,
            answers=Coalescer(DecisionCache(redis)),
            decisions=RoutingDecisions(redis),
            feedback=FeedbackStore(pool),
            responses=ResponseStore(pool, retention=dt.timedelta(days=settings.responses_retention_days)),
            limits=config.limits,
            created=int(time.time()),
            admin_token=settings.admin_token,
            log_sample_rate=settings.log_sample_rate,
            tracer=tracer,
        )
        app.state.runtime = runtime
        if drain_on_sigterm:
            drain.install(runtime, grace_s=settings.drain_grace_s, timeout_s=settings.drain_timeout_s)
        supervisor.start("auth-invalidation", authenticator.run)
        supervisor.start("ledger-writer", ledger.run)
        supervisor.start("responses-purge", runtime.responses.run_purge)
        for name, queue in queues.items():
            supervisor.start(f"queue-{name}", queue.listen)
        try:
            yield
        finally:
            runtime.draining = True
            await supervisor.stop()
            await ledger.close()
            await limiter.aclose()
            for provider in providers.values():
                await provider.aclose()
            await redis.aclose()
            await pool.close()
            if tracer is not None:
                tracer.shutdown()

    app = Litestar(
        route_handlers=[
            chat_completions,
            embeddings,
            create_response,
            get_response,
            delete_response,
            create_message,
            count_message_tokens,
            list_models,
            own_usage,
            rate_answer,
            admin_router,
            healthz,
            readyz,
            metrics,
        ],
        lifespan=[lifespan],
        middleware=[RequestIdMiddleware(), InputLimitsMiddleware()],
        exception_handlers={Exception: _error_handler},
        before_send=[AllowEveryMethod()],
        request_max_body_size=config.limits.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Sluice",
            version=__version__,
            path="/schema",
            components=COMPONENTS,
            security=TENANT_SECURITY,
            render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin()],
        ),
        debug=False,
    )
    return HotPath(app, config.limits.max_body_bytes)


def _quota_backends(
    redis: aioredis.Redis,
    pool: asyncpg.Pool,
    settings: Settings,
    config: FileConfig,
    metrics_: Metrics,
    processes: int,
) -> tuple[Limiter, dict[str, FairQueue]]:
    """The limiter and one fair queue per deployment with a capacity, sharing one view of Redis's health."""
    timeout_s = settings.admission_timeout_ms / 1000
    health = RedisHealth(redis, timeout_s=timeout_s, on_change=metrics_.set_quota_fallback)
    limiter = Limiter(
        redis,
        LedgerSpend(pool),
        timeout_s=timeout_s,
        reservation_ttl_s=settings.reservation_ttl_s,
        processes=lambda: processes,
        on_fail_open=lambda kind: metrics_.quota_fail_open.labels(kind).inc(),
        on_settle_error=metrics_.quota_settle_errors.inc,
        health=health,
        budget_holds=PostgresBudgetHolds(pool),
    )
    bounds = metrics_.bounds
    queues = {
        deployment.name: FairQueue(
            redis,
            deployment.name,
            deployment.capacity,
            timeout_s=timeout_s,
            processes=lambda: processes,
            on_depth=lambda name, depth: metrics_.queue_depth.labels(name).set(depth),
            on_wait=lambda tenant, seconds: metrics_.queue_wait.labels(bounds.tenant(tenant)).observe(seconds),
            on_fail_open=lambda kind: metrics_.quota_fail_open.labels(kind).inc(),
            health=health,
        )
        for deployment in config.deployments
        if deployment.capacity is not None
    }
    return limiter, queues


async def _start_ledger(pool: asyncpg.Pool, settings: Settings, metrics_: Metrics, limiter: Limiter) -> Ledger:
    """The usage ledger, with partitions made ahead and what killed processes left in the spool written; it
    tells the limiter's budget counters of every budgeted record that lands."""
    ledger = Ledger(
        pool,
        flush_interval=settings.ledger_flush_interval_s,
        on_flush=metrics_.ledger_written.inc,
        on_error=metrics_.ledger_errors.inc,
        spool=Spool(settings.ledger_spool_dir) if settings.ledger_spool_dir else None,
        reconcile=limiter.reconcile,
    )
    await ledger.ensure_partitions()
    await ledger.replay_spool()
    return ledger
