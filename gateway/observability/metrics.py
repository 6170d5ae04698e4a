"""Prometheus metrics (DESIGN §4 names), created once on a registry the app is given.

Tenant and model labels are bounded: a tenant gets its own label value only while fewer than
`max_tenant_labels` tenants have one (the rest share `other`); a model label is a configured
model name or `other`, so junk names from clients never mint a series.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
COST_BUCKETS = (0.000001, 0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)


class LabelBounds:
    """Maps tenant ids and model names to bounded label values."""

    def __init__(self, models: Iterable[str], max_tenant_labels: int = 100) -> None:
        self._models = frozenset(models)
        self._max_tenants = max_tenant_labels
        self._tenants: set[str] = set()

    def tenant(self, tenant_id: str | None) -> str:
        if tenant_id is None:
            return OTHER
        if tenant_id in self._tenants:
            return tenant_id
        if len(self._tenants) < self._max_tenants:
            self._tenants.add(tenant_id)
            return tenant_id
        return OTHER

    def model(self, name: str | None) -> str:
        return name if name in self._models else OTHER


class Metrics:
    def __init__(self, registry: CollectorRegistry, bounds: LabelBounds) -> None:
        self.bounds = bounds
        self.requests = Counter(
            "sluice_requests_total", "Requests by outcome (ok or the error cause).",
            ["tenant", "model", "outcome"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "sluice_request_duration_seconds", "End-to-end request latency in the gateway.",
            ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_duration = Histogram(
            "sluice_upstream_duration_seconds", "Upstream call latency (until the full body or stream end).",
            ["provider", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "sluice_tokens", "Tokens charged, by kind (prompt, completion, cached).",
            ["tenant", "model", "kind"], registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            "sluice_cost_usd", "Cost charged to tenants, in USD.", ["tenant", "model"], registry=registry
        )
        self.request_cost = Histogram(
            "sluice_request_cost_usd", "Cost of one request, in USD.", ["tenant"], buckets=COST_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.quota_rejections = Counter(
            "sluice_quota_rejections", "Requests refused by a quota, by kind.", ["tenant", "kind"], registry=registry
        )
        self.quota_shadow_rejections = Counter(
            "sluice_quota_shadow_rejections", "Requests a shadow-mode quota would have refused, by kind.",
            ["tenant", "kind"], registry=registry,
        )  # fmt: skip
        self.quota_settle_errors = Counter(
            "sluice_quota_settlement_errors", "Settlements that Redis could not apply at once (retried).",
            registry=registry,
        )  # fmt: skip
        self.quota_fail_open = Counter(
            "sluice_quota_fail_open", "Admissions decided by the local fallback while Redis was unreachable.",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.auth_failures = Counter(
            "sluice_auth_failures", "Refused authentications, by reason.", ["reason"], registry=registry
        )
        self.ledger_written = Counter(
            "sluice_usage_records_written", "Usage records written to Postgres.", registry=registry
        )
        self.ledger_errors = Counter(
            "sluice_usage_write_errors", "Usage batches that failed to write (and were retried).", registry=registry
        )
        self.ledger_pending = Gauge(
            "sluice_usage_records_pending", "Usage records waiting to be written.", registry=registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.inflight = Gauge(
            "sluice_inflight_requests", "Requests being served.", registry=registry, multiprocess_mode="livesum"
        )
        self.truncated_streams = Counter(
            "sluice_truncated_streams", "Streams that ended with a terminal error event.", ["tenant"],
            registry=registry,
        )  # fmt: skip

    def observe_request(self, tenant_id: str | None, model: str | None, outcome: str, seconds: float) -> None:
        tenant, model_label = self.bounds.tenant(tenant_id), self.bounds.model(model)
        self.requests.labels(tenant, model_label, outcome).inc()
        self.request_duration.labels(tenant, model_label).observe(seconds)

    def observe_charge(
        self, tenant_id: str, model: str, prompt: int, completion: int, cached: int, cost: Decimal
    ) -> None:
        tenant, model_label = self.bounds.tenant(tenant_id), self.bounds.model(model)
        self.tokens.labels(tenant, model_label, "prompt").inc(prompt)
        self.tokens.labels(tenant, model_label, "completion").inc(completion)
        if cached:
            self.tokens.labels(tenant, model_label, "cached").inc(cached)
        self.cost.labels(tenant, model_label).inc(float(cost))
        self.request_cost.labels(tenant).observe(float(cost))
