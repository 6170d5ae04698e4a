"""Stage 9, account: cost, metrics, ledger record and the request's log line, all from one context.

Synchronous on purpose: it runs in a stream's `finally`, where a cancelled generator cannot await.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from decimal import Decimal

import msgspec

from gateway.accounting.ledger import UsageRecord
from gateway.accounting.pricing import TokenUsage, cost_usd
from gateway.context import RequestContext
from gateway.observability.logging import request_logger
from gateway.runtime import Runtime, Target
from quota import Reservation


class Spent(msgspec.Struct, frozen=True, kw_only=True):
    """One upstream call's (or one cache hit's) usage and price, and who served it."""

    kind: str
    """Provider kind (`openai`, `simulator`), or `cache` for a hit."""
    model: str
    deployment: str
    usage: TokenUsage
    cost: Decimal
    source: str
    """Where the usage came from: `upstream`, `counted` (tiktoken) or `cache`."""


def spent_on(target: Target, usage: TokenUsage, source: str) -> Spent:
    provider = target.provider
    return Spent(
        kind=provider.kind, model=provider.model, deployment=provider.deployment, usage=usage,
        cost=cost_usd(usage, target.price), source=source,
    )  # fmt: skip


def charge(
    rt: Runtime,
    ctx: RequestContext,
    alias: str,
    spent: Spent,
    reservation: Reservation | None = None,
    *,
    discarded: Sequence[Spent] = (),
    saved: tuple[str, Decimal] | None = None,
) -> None:
    """Price the request and write its one usage record (queued; the ledger writes it in a batch).

    `discarded`: calls whose answer the client did not get (a cascade's small call before it escalated); they
    are charged too, in the same record. `saved`: (reason, USD) against the always-large counterfactual."""
    assert ctx.tenant is not None
    tenant_id = ctx.tenant.tenant_id
    calls = [*discarded, spent]
    for one in calls:
        rt.metrics.observe_charge(
            tenant_id, alias, (one.kind, one.model), one.usage.prompt_tokens, one.usage.completion_tokens,
            one.usage.cached_tokens, one.cost, operation=ctx.operation, upstream=one.source != "cache",
        )  # fmt: skip
    usage = TokenUsage(
        prompt_tokens=sum(one.usage.prompt_tokens for one in calls),
        completion_tokens=sum(one.usage.completion_tokens for one in calls),
        cached_tokens=sum(one.usage.cached_tokens for one in calls),
    )
    cost = sum((one.cost for one in calls), Decimal(0))
    rt.metrics.observe_cost(tenant_id, cost, saved=saved, wasted=sum((one.cost for one in discarded), Decimal(0)))
    admitted_at_ms = reservation.admission.admitted_at_ms if reservation is not None else None
    ctx.usage, ctx.cost = usage, cost
    ctx.served_model, ctx.deployment, ctx.provider = spent.model, spent.deployment, spent.kind
    rt.ledger.record(
        UsageRecord(
            request_id=ctx.request_id,
            created_at=dt.datetime.now(dt.UTC),
            tenant_id=tenant_id,
            key_id=ctx.tenant.key_id,
            model=alias,
            served_model=spent.model,
            deployment=spent.deployment,
            provider=spent.kind,
            route=ctx.route,
            stream=ctx.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=cost,
            outcome=ctx.outcome,
            truncated=ctx.truncated,
            usage_source=spent.source,
            duration_ms=round(ctx.elapsed() * 1000),
            admitted_at=dt.datetime.fromtimestamp(admitted_at_ms / 1000, dt.UTC) if admitted_at_ms else None,
            end_user=ctx.end_user,
            routing_features=ctx.routing_features,
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
        operation=ctx.operation,
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
        confidence=ctx.confidence,
        small_confidence=ctx.small_confidence,
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
