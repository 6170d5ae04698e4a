"""Prometheus metrics (DESIGN §4 names, docs/metrics.md), created once on a registry the app is given.

Label values are bounded: a tenant gets its own label value only if allow-listed or while fewer
than `max_tenant_labels` tenants have one (the rest share `other`); a model label is a configured
model name or `other`, so junk names from clients never mint a series. Metric and label names live
here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from quota.types import Admission

OTHER = "other"

# `*_created` series double the series count for no use on a dashboard, and multiprocess mode never
# exports them: off, so one process and several export the same names (docs/metrics.md).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# The 50 ms overhead SLO threshold is an exact bucket boundary (ECOSYSTEM §2.1).
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
COST_BUCKETS = (0.000001, 0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)
# OpenTelemetry GenAI semantic conventions' explicit bucket boundaries.
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "simulator": "sluice.simulator"}
QUOTA_KINDS_BY_CODE = {
    "rate_limit_exceeded": "rpm",
    "tokens_limit_exceeded": "tpm",
    "budget_exceeded": "budget",
    "concurrency_limit_exceeded": "concurrency",
    "queue_timeout": "queue",
}
GENAI_OP = "gen_ai_operation_name"
GENAI_PROVIDER = "gen_ai_provider_name"
GENAI_REQUEST_MODEL = "gen_ai_request_model"
GENAI_RESPONSE_MODEL = "gen_ai_response_model"


class LabelBounds:
    """Maps tenant ids and model names to bounded label values."""

    def __init__(self, models: Iterable[str], max_tenant_labels: int = 100, tenants: Iterable[str] = ()) -> None:
        self._models = frozenset(models)
        self._max_tenants = max_tenant_labels
        self._allowed = frozenset(tenants)
        self._tenants: set[str] = set()

    def tenant(self, tenant_id: str | None) -> str:
        if tenant_id is None:
            return OTHER
        if tenant_id in self._allowed or tenant_id in self._tenants:
            return tenant_id
        if len(self._tenants) < self._max_tenants:
            self._tenants.add(tenant_id)
            return tenant_id
        return OTHER

    def model(self, name: str | None) -> str:
        return name if name in self._models else OTHER


class Metrics:
    def __init__(self, registry: CollectorRegistry, bounds: LabelBounds, version: str) -> None:
        self.bounds = bounds
        self.requests = Counter(
            "sluice_requests", "Requests by outcome (ok or the error cause).",
            ["tenant", "model", "outcome"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "sluice_request_duration_seconds", "End-to-end request latency in the gateway.",
            ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.time_to_first_token = Histogram(
            "sluice_time_to_first_token_seconds", "Streams: time until the first content event was sent.",
            ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_duration = Histogram(
            "sluice_upstream_duration_seconds", "Upstream call latency (until the body or the stream ends).",
            ["provider", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "sluice_stage_duration_seconds", "Time in each pipeline stage.", ["stage"], buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.overhead = Histogram(
            "sluice_overhead_seconds", "Time spent in Sluice excluding the upstream call.", buckets=OVERHEAD_BUCKETS,
            registry=registry,
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
        self.cost_saved = Counter(
            "sluice_cost_saved_usd", "Cost saved against calling the route's largest model, in USD, by reason "
            "(cache_hit, routed_small).", ["tenant", "reason"], registry=registry,
        )  # fmt: skip
        self.discarded_cost = Counter(
            "sluice_discarded_cost_usd", "Cost of upstream answers the client never got (a cascade's small call "
            "before it escalated), in USD; included in sluice_cost_usd_total.", ["tenant"], registry=registry,
        )  # fmt: skip
        self.feedback = Counter(
            "sluice_feedback", "Ratings of answers received (POST /v1/feedback), by rating.", ["tenant", "rating"],
            registry=registry,
        )  # fmt: skip
        self.cache_lookups = Counter(
            "sluice_cache_lookups", "Decision cache look-ups by result (hit, miss, bypass).", ["tenant", "result"],
            registry=registry,
        )  # fmt: skip
        self.route_decisions = Counter(
            "sluice_route_decisions", "What the router decided.", ["route", "decision"], registry=registry
        )
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
        # Set at each admission from the numbers the admission script saw; `mostrecent` so a scrape of any
        # worker shows the latest admission on any worker.
        self.budget_limit = Gauge(
            "sluice_budget_limit_usd", "A tenant's budget for the current period, USD.", ["tenant", "period"],
            registry=registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.budget_used = Gauge(
            "sluice_budget_used_usd", "Spend plus open reservations this period, USD, at the last admission.",
            ["tenant", "period"], registry=registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.quota_fallback = Gauge(
            "sluice_quota_fallback_active", "1 while quotas of this kind are decided without Redis (unreachable).",
            ["kind"], registry=registry, multiprocess_mode="max",
        )  # fmt: skip
        self.set_quota_fallback(up=True)
        self.queue_depth = Gauge(
            "sluice_queue_depth", "Requests waiting for upstream capacity.", ["deployment"], registry=registry,
            multiprocess_mode="max",
        )  # fmt: skip
        self.queue_wait = Histogram(
            "sluice_queue_wait_seconds", "Time spent waiting in the fair queue.", ["tenant"], buckets=LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.auth_failures = Counter(
            "sluice_auth_failures", "Refused authentications, by reason.", ["reason"], registry=registry
        )
        self.truncated_streams = Counter(
            "sluice_truncated_streams", "Streams that ended with a terminal error event.", ["tenant"],
            registry=registry,
        )  # fmt: skip
        self.usage_anomalies = Counter(
            "sluice_upstream_usage_anomalies", "Upstream usage reports clamped (negative or absurd).", ["provider"],
            registry=registry,
        )  # fmt: skip
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
        build_info = Gauge(
            "sluice_build_info", "Build metadata; always 1.", ["version"], registry=registry, multiprocess_mode="max"
        )
        build_info.labels(version).set(1)
        self.genai_client_tokens = Histogram(
            "gen_ai_client_token_usage", "OTel GenAI: tokens used per upstream call.",
            [GENAI_OP, GENAI_PROVIDER, "gen_ai_token_type", GENAI_REQUEST_MODEL, GENAI_RESPONSE_MODEL],
            buckets=GENAI_TOKEN_BUCKETS, registry=registry,
        )  # fmt: skip
        self.genai_client_duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "OTel GenAI: duration of upstream calls.",
            [GENAI_OP, GENAI_PROVIDER, GENAI_REQUEST_MODEL, GENAI_RESPONSE_MODEL, "error_type"],
            buckets=GENAI_DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.genai_server_duration = Histogram(
            "gen_ai_server_request_duration_seconds", "OTel GenAI: duration of requests served to tenants.",
            [GENAI_OP, GENAI_REQUEST_MODEL, "error_type"], buckets=GENAI_DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.genai_server_ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "OTel GenAI: time to the first token served to tenants.",
            [GENAI_OP, GENAI_REQUEST_MODEL], buckets=GENAI_TTFT_BUCKETS, registry=registry,
        )  # fmt: skip

    def observe_request(
        self,
        *,
        tenant_id: str | None,
        model: str | None,
        outcome: str,
        error_code: str | None,
        seconds: float,
        timings: Mapping[str, float],
        first_token_s: float | None,
        operation: str = "chat",
    ) -> None:
        tenant, model_label = self.bounds.tenant(tenant_id), self.bounds.model(model)
        self.requests.labels(tenant, model_label, outcome).inc()
        self.request_duration.labels(tenant, model_label).observe(seconds)
        error_type = "" if outcome == "ok" else outcome
        self.genai_server_duration.labels(operation, model_label, error_type).observe(seconds)
        for stage, value in timings.items():
            self.stage_duration.labels(stage).observe(value)
        self.overhead.observe(max(0.0, seconds - timings.get("upstream", 0.0)))
        if first_token_s is not None:
            self.time_to_first_token.labels(tenant, model_label).observe(first_token_s)
            self.genai_server_ttft.labels(operation, model_label).observe(first_token_s)
        kind = QUOTA_KINDS_BY_CODE.get(error_code or "")
        if kind is not None:
            self.quota_rejections.labels(tenant, kind).inc()

    def set_quota_fallback(self, up: bool) -> None:
        """Redis went away or came back: rate limits, concurrency and queues fall back to local limiters,
        budgets to refusal (RELIABILITY §6.2)."""
        for kind in ("rpm", "tpm", "concurrency", "queue", "budget"):
            self.quota_fallback.labels(kind).set(0 if up else 1)

    def observe_admission(self, tenant_id: str, admission: Admission) -> None:
        """Shadow rejections, and the tenant's budget as admission saw it (only for tenants with their own label:
        under `other`, many tenants' budgets would overwrite each other)."""
        tenant = self.bounds.tenant(tenant_id)
        for kind in admission.shadow_rejections:
            self.quota_shadow_rejections.labels(tenant, kind).inc()
        budget = admission.budget
        if budget is not None and tenant != OTHER:
            self.budget_limit.labels(tenant, budget.period).set(float(budget.limit_usd))
            self.budget_used.labels(tenant, budget.period).set(float(budget.used_usd))

    def observe_upstream(
        self, provider: str, model: str, seconds: float, error_type: str | None, operation: str = "chat"
    ) -> None:
        """One upstream call (`model` is a configured deployment's model, so it is bounded by configuration)."""
        self.upstream_duration.labels(provider, model).observe(seconds)
        genai_provider = GENAI_PROVIDERS.get(provider, provider)
        self.genai_client_duration.labels(operation, genai_provider, model, model, error_type or "").observe(seconds)

    def observe_charge(
        self,
        tenant_id: str,
        model: str,
        served: tuple[str, str],
        prompt: int,
        completion: int,
        cached: int,
        cost: Decimal,
        *,
        operation: str = "chat",
        upstream: bool = True,
    ) -> None:
        """Tokens and cost charged; the GenAI client histograms only for a real upstream call (`upstream`:
        not for a cache hit), and no output tokens for an operation that has none (embeddings)."""
        tenant, model_label = self.bounds.tenant(tenant_id), self.bounds.model(model)
        self.tokens.labels(tenant, model_label, "prompt").inc(prompt)
        self.tokens.labels(tenant, model_label, "completion").inc(completion)
        if cached:
            self.tokens.labels(tenant, model_label, "cached").inc(cached)
        self.cost.labels(tenant, model_label).inc(float(cost))
        if not upstream:
            return
        provider, served_model = GENAI_PROVIDERS.get(served[0], served[0]), served[1]
        self.genai_client_tokens.labels(operation, provider, "input", served_model, served_model).observe(prompt)
        if operation != "embeddings":
            self.genai_client_tokens.labels(operation, provider, "output", served_model, served_model).observe(
                completion
            )

    def observe_cost(
        self, tenant_id: str, cost: Decimal, *, saved: tuple[str, Decimal] | None, wasted: Decimal
    ) -> None:
        """Once per request: its whole cost, what routing or the cache saved, what an escalation threw away."""
        tenant = self.bounds.tenant(tenant_id)
        self.request_cost.labels(tenant).observe(float(cost))
        if saved is not None and saved[1] > 0:
            self.cost_saved.labels(tenant, saved[0]).inc(float(saved[1]))
        if wasted > 0:
            self.discarded_cost.labels(tenant).inc(float(wasted))


class _Snapshot:
    """The collected families plus `sluice_metric_series`, the number of live series in this scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        series = sum(len(family.samples) for family in self._families)
        yield from self._families
        yield GaugeMetricFamily("sluice_metric_series", "Live series in this scrape.", value=series + 1)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(_Snapshot(list(registry.collect())))  # type: ignore[arg-type,unused-ignore]  # any collect()
