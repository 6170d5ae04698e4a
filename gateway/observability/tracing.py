"""Optional OpenTelemetry tracing: one span per request and one per pipeline stage, GenAI attributes.

Off by default and free when off: nothing here is imported or called unless `SLUICE_TRACING` is set.
Spans are built once the request is over, from the timings the pipeline already records, so tracing
adds no work inside the stages themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.context import RequestContext


class Tracer:
    """Turns a finished `RequestContext` into spans (attribute names after the OTel GenAI conventions)."""

    def __init__(self, exporter: SpanExporter, service_name: str = "sluice") -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("sluice.gateway")

    def record(self, ctx: RequestContext) -> None:
        from opentelemetry import trace

        end_ns = ctx.started_ns_wall + int(ctx.elapsed() * 1e9)
        attributes: dict[str, str | int | float | bool] = {
            "gen_ai.operation.name": "chat",
            "sluice.request_id": ctx.request_id,
            "sluice.outcome": ctx.outcome,
            "sluice.route": ctx.route,
            "sluice.cache": ctx.cache,
        }
        if ctx.model:
            attributes["gen_ai.request.model"] = ctx.model
        if ctx.served_model:
            attributes["gen_ai.response.model"] = ctx.served_model
        if ctx.provider:
            attributes["gen_ai.provider.name"] = ctx.provider
        if ctx.tenant is not None:
            attributes["sluice.tenant"] = ctx.tenant.tenant_id
        if ctx.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = ctx.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = ctx.usage.completion_tokens
        if ctx.cost is not None:
            attributes["sluice.cost_usd"] = float(ctx.cost)
        if ctx.outcome != "ok":
            attributes["error.type"] = ctx.outcome
        span = self._tracer.start_span(
            f"chat {ctx.model or ''}".strip(), start_time=ctx.started_ns_wall, attributes=attributes
        )
        parent = trace.set_span_in_context(span)
        for stage, start_ns, duration_ns in ctx.stage_spans:
            child = self._tracer.start_span(f"sluice.{stage}", context=parent, start_time=start_ns)
            child.end(end_time=start_ns + duration_ns)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self._provider.shutdown()


def exporter_for(kind: str) -> SpanExporter:
    """`otlp` (OTLP over HTTP; endpoint from the standard `OTEL_EXPORTER_OTLP_*` variables) or `console`."""
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
