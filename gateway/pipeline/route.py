"""Stage 5, route: the model name a tenant called → the route that serves it (built once from `sluice.toml`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.accounting.pricing import FREE
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.providers.base import Provider
from gateway.routing.combine import MIN_COMBINER_EXAMPLES
from gateway.routing.errors import ScorerArtifactError
from gateway.routing.scorer import Scorer
from gateway.runtime import ResolvedRoute, Target
from gateway.schema.openai import ChatRequest
from gateway.settings import (
    CascadeRoute,
    ConfigError,
    FallbackRoute,
    FileConfig,
    ScoredRoute,
    route_deployments,
)


def build_routes(config: FileConfig, providers: Mapping[str, Provider]) -> dict[str, ResolvedRoute]:
    """Every model name tenants may call, bound to its deployments, prices and policy."""
    context = {d.name: d.max_context_tokens for d in config.deployments}
    routes = {}
    for alias in config.models:
        spec = alias.route
        targets = tuple(
            Target(provider=providers[name], price=config.prices.get(name, FREE), max_context_tokens=context[name])
            for name in route_deployments(spec)
        )
        resolved = ResolvedRoute(alias=alias.name, policy="fixed", targets=targets, cache=alias.cache)
        if isinstance(spec, FallbackRoute):
            resolved = ResolvedRoute(
                alias=alias.name, policy="fallback", targets=targets, cache=alias.cache,
                latency_budget_s=spec.latency_budget_s,
            )  # fmt: skip
        elif isinstance(spec, CascadeRoute):
            resolved = ResolvedRoute(
                alias=alias.name, policy="cascade", targets=targets, cache=alias.cache, threshold=spec.threshold,
                remember_escalations_s=spec.remember_escalations_s,
                scorer=load_scorer(spec.scorer, for_cascade=True) if spec.scorer is not None else None,
            )  # fmt: skip
        elif isinstance(spec, ScoredRoute):
            resolved = ResolvedRoute(
                alias=alias.name, policy="scored", targets=targets, cache=alias.cache, threshold=spec.threshold,
                scorer=load_scorer(spec.scorer, for_cascade=False),
            )  # fmt: skip
        routes[alias.name] = resolved
    return routes


def load_scorer(path: str, *, for_cascade: bool) -> Scorer:
    """A route's verified scorer artifact; a cascade's must carry the combiner it needs (`ConfigError` if not)."""
    try:
        scorer = Scorer.load(Path(path))
    except ScorerArtifactError as exc:
        raise ConfigError(str(exc)) from None
    if for_cascade and scorer.artifact.cascade is None:
        raise ConfigError(
            f"{path}: this scorer has no cascade combiner; `sluice router train` fits one on the held-out prompts "
            f"(`--validation-share` > 0) when at least {MIN_COMBINER_EXAMPLES} of them carry `small_confidence` "
            "(as `sluice simulator dataset` writes them)"
        )
    return scorer


def check_scorers(config: FileConfig) -> None:
    """Load every route's scorer once, so `sluice serve` refuses a bad artifact before starting anything."""
    for alias in config.models:
        spec = alias.route
        if isinstance(spec, ScoredRoute | CascadeRoute) and spec.scorer is not None:
            load_scorer(spec.scorer, for_cascade=isinstance(spec, CascadeRoute))


def route_named(routes: dict[str, ResolvedRoute], model: str) -> ResolvedRoute:
    resolved = routes.get(model)
    if resolved is None:
        raise NotFoundError(
            f"The model `{model[:100]}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
            outcome="invalid_request",
        )
    return resolved


def route(routes: dict[str, ResolvedRoute], request: ChatRequest) -> ResolvedRoute:
    resolved = route_named(routes, request.model)
    limit = request.completion_limit
    if limit is not None and limit > resolved.max_context_tokens:
        raise InvalidRequestError(
            f"`max_tokens` is at most {resolved.max_context_tokens} for model `{request.model}`.",
            param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        )
    return resolved
