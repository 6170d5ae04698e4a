"""Stage 9, account: cost, metrics, ledger record and the request's log line, all from one context.

Synchronous on purpose: it runs in a stream's `finally`, where a cancelled generator cannot await.
"""

from __future__ import annotations

import datetime as dt
import random

from gateway.accounting.ledger import UsageRecord
from gateway.accounting.pricing import TokenUsage, cost_usd
from gateway.context import RequestContext
from gateway.observability.logging import request_logger
from gateway.runtime import ResolvedRoute, Runtime
from quota import Reservation


def charge(
    rt: Runtime,
    ctx: RequestContext,
    resolved: ResolvedRoute,
    usage: TokenUsage,
    source: str,
    reservation: Reservation | None = None,
) -> None:
    """Price the call and write its usage record (queued; the ledger writes it in a batch)."""
    assert ctx.tenant is not None
    cost = cost_usd(usage, resolved.price)
    admitted_at_ms = reservation.admission.admitted_at_ms if reservation is not None else None
    ctx.usage, ctx.cost = usage, cost
    served = (resolved.provider.kind, resolved.provider.model)
    rt.metrics.observe_charge(
        ctx.tenant.tenant_id, resolved.alias, served, usage.prompt_tokens, usage.completion_tokens,
        usage.cached_tokens, cost,
    )  # fmt: skip
    rt.ledger.record(
        UsageRecord(
            request_id=ctx.request_id,
            created_at=dt.datetime.now(dt.UTC),
            tenant_id=ctx.tenant.tenant_id,
            key_id=ctx.tenant.key_id,
            model=resolved.alias,
            served_model=resolved.provider.model,
            deployment=resolved.provider.deployment,
            provider=resolved.provider.kind,
            route=ctx.route,
            stream=ctx.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=cost,
            outcome=ctx.outcome,
            truncated=ctx.truncated,
            usage_source=source,
            duration_ms=round(ctx.elapsed() * 1000),
            admitted_at=dt.datetime.fromtimestamp(admitted_at_ms / 1000, dt.UTC) if admitted_at_ms else None,
            end_user=ctx.end_user,
            budget_trail=reservation.trail if reservation is not None else None,
        )
    )


def finish(rt: Runtime, ctx: RequestContext) -> None:
    """Count the request and write its one log line (no key, no prompt, no completion)."""
    seconds = ctx.elapsed()
    tenant_id = ctx.tenant.tenant_id if ctx.tenant else None
    rt.metrics.observe_request(
        tenant_id=tenant_id,
        model=ctx.model,
        outcome=ctx.outcome,
        error_code=ctx.error_code,
        seconds=seconds,
        timings=ctx.timings,
        first_token_s=ctx.first_token_s,
    )
    if rt.tracer is not None:
        rt.tracer.record(ctx)
    if ctx.outcome == "ok" and rt.log_sample_rate < 1 and random.random() >= rt.log_sample_rate:  # noqa: S311  # sampling, not security
        return
    usage = ctx.usage
    request_logger().info(
        "request",
        request_id=ctx.request_id,
        tenant=tenant_id,
        key_prefix=ctx.tenant.key_prefix if ctx.tenant else None,
        model=ctx.model,
        served_model=ctx.served_model,
        route=ctx.route,
        cache=ctx.cache,
        stream=ctx.stream,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        cost_usd=str(ctx.cost) if ctx.cost is not None else None,
        outcome=ctx.outcome,
        truncated=ctx.truncated,
        duration_ms=round(seconds * 1000, 3),
        stages_ms={stage: round(value * 1000, 3) for stage, value in ctx.timings.items()},
        **(ctx.logged_text or {}),
    )
