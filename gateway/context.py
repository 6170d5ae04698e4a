"""`RequestContext`: what the `account` stage and the request log need at the end of a request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

from gateway.accounting.pricing import TokenUsage
from tenants.models import TenantContext


class RequestContext:
    """Filled in as the request moves forward; read once, by `account`."""

    __slots__ = (
        "cache",
        "confidence",
        "cost",
        "deployment",
        "end_user",
        "error_code",
        "first_token_s",
        "logged_text",
        "model",
        "operation",
        "outcome",
        "provider",
        "request_id",
        "route",
        "routing_features",
        "served_model",
        "small_confidence",
        "stage_spans",
        "started_ns",
        "started_ns_wall",
        "stream",
        "tenant",
        "timings",
        "truncated",
        "usage",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started_ns = time.perf_counter_ns()
        self.started_ns_wall = time.time_ns()
        self.stage_spans: list[tuple[str, int, int]] = []
        """(stage, wall-clock start ns, duration ns) of each timed block, for tracing."""
        self.tenant: TenantContext | None = None
        self.model: str | None = None
        self.operation = "chat"
        """The OpenTelemetry GenAI operation (`chat`, `embeddings`) for the GenAI metrics."""
        self.end_user: str | None = None
        """The request's `user`, hashed (`quota.keys.end_user_id`), for the ledger."""
        self.served_model: str | None = None
        self.deployment: str | None = None
        self.provider: str | None = None
        self.route = "none"
        self.cache = "bypass"
        self.routing_features: bytes | None = None
        """A confidence-routed prompt's scorer features, kept in its usage record for training."""
        self.confidence: float | None = None
        """The router's confidence (cascade: the small answer's, combined with the prompt prior when the route has
        one; scored: the scorer's prediction)."""
        self.small_confidence: float | None = None
        """A cascade with a prompt prior: the small answer's own confidence, before the prior was combined."""
        self.stream = False
        self.usage: TokenUsage | None = None
        self.cost: Decimal | None = None
        self.outcome = "ok"
        self.error_code: str | None = None
        self.first_token_s: float | None = None
        self.logged_text: dict[str, str] | None = None
        """Prompt and completion text for the log line: set only when the tenant's compliance setting allows."""
        self.truncated = False
        self.timings: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time spent in the block to `timings[stage]`, in seconds."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            duration = time.perf_counter_ns() - start
            self.timings[stage] = self.timings.get(stage, 0.0) + duration / 1e9
            self.stage_spans.append((stage, self.started_ns_wall + start - self.started_ns, duration))

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def timing_headers(self) -> dict[str, str]:
        """`Server-Timing` and `x-sluice-overhead-ms`, from one reading of the clock so they agree.

        Time spent between timed stages is reported as `other`, so the stages always add up to `total`.
        """
        total = self.elapsed()
        staged = sum(self.timings.values())
        parts = [f"{stage};dur={value * 1000:.3f}" for stage, value in self.timings.items()]
        parts.append(f"other;dur={max(0.0, total - staged) * 1000:.3f}")
        parts.append(f"total;dur={total * 1000:.3f}")
        overhead = max(0.0, total - self.timings.get("upstream", 0.0)) * 1000
        return {"server-timing": ", ".join(parts), "x-sluice-overhead-ms": f"{overhead:.3f}"}

    def elapsed(self) -> float:
        return (time.perf_counter_ns() - self.started_ns) / 1e9
