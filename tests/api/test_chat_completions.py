"""Chat completions through the gateway with the official openai SDK: answers, headers, and the ledger."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import openai

from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway

PRICE_SMALL_IN, PRICE_SMALL_OUT = Decimal("0.15"), Decimal("0.60")


def _client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


async def _record(database_url: str, request_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    assert row is not None, f"no usage record for {request_id}"
    return row


async def test_simulator_completion_usage_record_matches_cost_header(gateway: Gateway, database_url: str) -> None:
    _, key = await gateway.tenant_key()
    async with _client(gateway, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="small", messages=[{"role": "user", "content": "Say hello"}]
        )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers["x-sluice-model"] == "small"
    assert raw.headers["x-sluice-route"] == "fixed"
    cost = Decimal(raw.headers["x-sluice-cost-usd"])
    usage = completion.usage
    assert usage is not None
    expected = (usage.prompt_tokens * PRICE_SMALL_IN + usage.completion_tokens * PRICE_SMALL_OUT) / 1_000_000
    assert cost == expected
    await gateway.flush_ledger()
    record = await _record(database_url, raw.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert record["cost_usd"] == cost
    assert record["outcome"] == "ok"
    assert not record["truncated"]


async def test_streaming_completion_with_include_usage_is_recorded_at_the_reported_usage(
    gateway: Gateway, database_url: str
) -> None:
    _, key = await gateway.tenant_key()
    async with _client(gateway, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="small",
            messages=[{"role": "user", "content": "Stream to me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        stream = raw.parse()
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
    assert text
    assert usage is not None
    await gateway.flush_ledger()
    record = await _record(database_url, raw.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    expected = (usage.prompt_tokens * PRICE_SMALL_IN + usage.completion_tokens * PRICE_SMALL_OUT) / 1_000_000
    assert record["cost_usd"] == expected
    assert record["usage_source"] == "upstream"


async def test_stream_without_include_usage_gets_no_usage_chunk_but_is_still_metered(
    gateway: Gateway, database_url: str
) -> None:
    _, key = await gateway.tenant_key()
    async with _client(gateway, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="small", messages=[{"role": "user", "content": "no usage please"}], stream=True
        )
        chunks = [chunk async for chunk in raw.parse()]
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk must be dropped"
    await gateway.flush_ledger()
    record = await _record(database_url, raw.headers["x-request-id"])
    assert record["completion_tokens"] > 0
    assert record["usage_source"] == "upstream"


async def test_sync_client_streaming_and_not(gateway: Gateway) -> None:
    _, key = await gateway.tenant_key()

    def use_sync_sdk() -> tuple[str, str]:
        with openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
            plain = client.chat.completions.create(model="large", messages=[{"role": "user", "content": "hi"}])
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model="large", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                if chunk.choices
            )
        return plain.choices[0].message.content or "", streamed

    plain, streamed = await asyncio.to_thread(use_sync_sdk)
    assert plain
    assert plain == streamed, "the simulator is deterministic: streamed and plain answers agree"


async def test_models_lists_the_configured_model_names(gateway: Gateway) -> None:
    _, key = await gateway.tenant_key()
    async with _client(gateway, key) as client:
        models = [model.id async for model in client.models.list()]
    assert {"small", "large", "fake-ok"} <= set(models)


async def test_tools_tool_calls_and_logprobs_pass_through_the_adapter_unchanged(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    _, key = await gateway.tenant_key()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": True,
            },
        }
    ]
    async with _client(gateway, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="fake-tools",
            messages=[{"role": "user", "content": "weather?"}],
            tools=tools,  # type: ignore[arg-type]
            tool_choice="required",
            extra_body={"vendor_field": {"kept": True}},
        )
        completion = raw.parse()
        logprobs = await client.chat.completions.create(
            model="fake-logprobs", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=2
        )
    sent = fake.requests[0]["json"]
    assert sent["tools"] == tools
    assert sent["tool_choice"] == "required"
    assert sent["vendor_field"] == {"kept": True}, "unknown fields are forwarded untouched"
    assert sent["model"] == "fake-tools"
    assert fake.requests[0]["headers"]["Authorization"] == "Bearer sk-upstream-provider-secret-42"
    assert await raw.http_response.aread() == fake.requests[0]["response"], "the body passes through byte for byte"
    call = completion.choices[0].message.tool_calls
    assert call and call[0].function.name == "get_weather"
    assert logprobs.choices[0].logprobs is not None
    assert logprobs.choices[0].logprobs.content
