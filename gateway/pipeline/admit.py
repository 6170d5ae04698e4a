"""Stage 3, admit (the gateway's half): which quota levels apply to a request and what it may consume."""

from __future__ import annotations

from gateway.accounting.pricing import TokenUsage, cost_usd
from gateway.accounting.tokens import count_prompt
from gateway.runtime import ResolvedRoute
from gateway.schema.openai import ChatRequest
from gateway.settings import Limits
from quota.types import Demand, Level, LevelLimits
from tenants.models import TenantContext


def levels_for(tenant: TenantContext, request: ChatRequest) -> list[Level]:
    del request  # key, model and end-user levels join here with the quota issue's per-level limits
    quota = tenant.quota
    limits = LevelLimits(
        rpm=quota.rpm,
        tpm=quota.tpm,
        budget_usd=quota.budget_usd,
        budget_period=quota.budget_period,
        max_concurrency=quota.max_concurrency,
    )
    return [Level(tenant_id=tenant.tenant_id, scope="tenant", scope_id=tenant.tenant_id, limits=limits)]


def demand_for(request: ChatRequest, resolved: ResolvedRoute, limits: Limits, request_id: str) -> Demand:
    """The most this request may consume: its prompt (tiktoken) plus its completion limit, × `n`."""
    prompt = count_prompt(request)
    choices = request.n or 1
    completion = (request.completion_limit or limits.default_max_tokens) * choices
    worst = TokenUsage(prompt_tokens=prompt, completion_tokens=completion)
    return Demand(request_id=request_id, tokens=worst.total, cost_usd=cost_usd(worst, resolved.price))
