"""Optional OpenTelemetry tracing: a span per request with GenAI attributes and a child span per stage."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.harness import Gateway, file_config, running_gateway


async def test_a_request_becomes_a_span_with_genai_attributes_and_stage_children(
    database_url: str, redis_url: str
) -> None:
    exporter = InMemorySpanExporter()
    async with running_gateway(database_url, redis_url, file_config(), span_exporter=exporter) as gateway:
        _, key = await gateway.tenant_key(rpm=100)
        async with httpx.AsyncClient(base_url=gateway.base_url) as client:
            response = await client.post(
                "/chat/completions",
                json={"model": "small", "messages": [{"role": "user", "content": "trace me"}]},
                headers={"authorization": f"Bearer {key}"},
            )
        assert response.status_code == 200
    spans = exporter.get_finished_spans()  # the provider flushed on shutdown
    (root,) = [span for span in spans if span.parent is None]
    assert root.name == "chat small"
    attributes = dict(root.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "small"
    assert attributes["gen_ai.usage.output_tokens"] == response.json()["usage"]["completion_tokens"]
    assert attributes["sluice.request_id"] == response.headers["x-request-id"]
    children = {span.name for span in spans if span.parent is not None}
    assert {"sluice.auth", "sluice.decode", "sluice.admit", "sluice.upstream", "sluice.settle"} <= children
    assert all(span.context.trace_id == root.context.trace_id for span in spans)
    assert not any(key in str(span.attributes) for span in spans)


async def test_tracing_is_off_by_default(gateway: Gateway) -> None:
    assert gateway.runtime.tracer is None
