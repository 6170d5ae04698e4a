"""Stage 3, admit (the gateway's half): which quota levels apply to a request and what it may consume."""

from __future__ import annotations

from decimal import Decimal
from typing import TypeAlias

from gateway.accounting.pricing import TokenUsage, cost_usd
from gateway.accounting.tokens import count_prompt
from gateway.runtime import ResolvedRoute
from gateway.schema.openai import ChatRequest
from gateway.settings import Limits
from quota.types import Demand, Level, LevelLimits, Scope
from tenants.models import Quota, ScopedLimits, TenantContext


def _limits(limits: ScopedLimits | Quota, mode: str, window_s: int) -> LevelLimits | None:
    if mode == "off":
        return None
    return LevelLimits(
        rpm=limits.rpm,
        tpm=limits.tpm,
        budget_usd=limits.budget_usd,
        budget_period=limits.budget_period,
        max_concurrency=limits.max_concurrency,
        shadow=mode == "shadow",
        window_s=window_s,
    )


_Candidate: TypeAlias = tuple[Scope, str, ScopedLimits | Quota, str]


def configured_levels(tenant_id: str, quota: Quota) -> list[Level]:
    """The tenant-wide, per-key and per-model levels a quota defines (not per end user: unbounded)."""
    candidates: list[_Candidate] = [("tenant", tenant_id, quota, quota.mode)]
    candidates += [("key", key_id, limits, limits.mode) for key_id, limits in quota.keys.items()]
    candidates += [("model", model, limits, limits.mode) for model, limits in quota.models.items()]
    return _levels(tenant_id, quota.window_s, candidates)


def _levels(
    tenant_id: str, window_s: int, candidates: list[tuple[Scope, str, ScopedLimits | Quota, str]]
) -> list[Level]:
    levels = []
    for scope, scope_id, limits, mode in candidates:
        level_limits = _limits(limits, mode, window_s)
        if level_limits is not None and not level_limits.empty:
            levels.append(Level(tenant_id=tenant_id, scope=scope, scope_id=scope_id, limits=level_limits))
    return levels


def levels_for(tenant: TenantContext, model: str, user: str | None) -> list[Level]:
    """Every quota level that applies: the tenant, the key used, the model called, and the end user
    named in `user` when the tenant limits end users (checked and taken together, atomically)."""
    quota, tenant_id = tenant.quota, tenant.tenant_id
    candidates: list[_Candidate] = [("tenant", tenant_id, quota, quota.mode)]
    if (key_limits := quota.keys.get(tenant.key_id)) is not None:
        candidates.append(("key", tenant.key_id, key_limits, key_limits.mode))
    if (model_limits := quota.models.get(model)) is not None:
        candidates.append(("model", model, model_limits, model_limits.mode))
    if quota.end_user is not None and user:
        candidates.append(("user", user, quota.end_user, quota.end_user.mode))
    return _levels(tenant_id, quota.window_s, candidates)


def demand_for(request: ChatRequest, resolved: ResolvedRoute, limits: Limits, request_id: str) -> tuple[Demand, int]:
    """The most this request may consume (its prompt by tiktoken plus its completion limit × `n`, at the dearest
    deployment the route may call; a cascade may call both), and the completion tokens one stream may deliver."""
    prompt = count_prompt(request)
    choices = request.n or 1
    completion = (request.completion_limit or limits.default_max_tokens) * choices
    worst = TokenUsage(prompt_tokens=prompt, completion_tokens=completion)
    costs = [cost_usd(worst, target.price) for target in resolved.targets]
    if resolved.policy == "cascade":  # the small call and then the large one
        return Demand(request_id=request_id, tokens=2 * worst.total, cost_usd=sum(costs, Decimal(0))), completion
    return Demand(request_id=request_id, tokens=worst.total, cost_usd=max(costs)), completion
