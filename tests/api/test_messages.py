"""`/v1/messages` through Sluice with the official `anthropic` SDK, streaming and not, with a tool call, in front
of a fake OpenAI-compatible upstream and of a fake Anthropic upstream (chat callers reach it too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway, file_config, running_gateway

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(name="claude")
async def fx_claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(name="both")
async def fx_both(
    database_url: str, redis_url: str, fake: FakeUpstream, claude: FakeAnthropic
) -> AsyncIterator[Gateway]:
    extra = f"""
[[deployments]]
kind = "anthropic"
name = "claude"
base_url = "{claude.base_url}"
model = "claude-tools"
api_key_env = "TEST_UPSTREAM_KEY"
[prices.claude]
input = 3.00
output = 15.00
[[models]]
name = "claude"
route = {{ policy = "fixed", deployment = "claude" }}
"""
    async with running_gateway(database_url, redis_url, file_config(fake.base_url, extra=extra)) as gateway:
        yield gateway


def _client(gateway: Gateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base, api_key=key, max_retries=0)


def _ask(**extra: Any) -> dict[str, Any]:
    return {
        "max_tokens": 256,
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        **extra,
    }


@pytest.mark.parametrize("model", ["fake-agent", "claude"], ids=["openai-upstream", "anthropic-upstream"])
async def test_the_anthropic_sdk_gets_a_tool_call_then_an_answer(both: Gateway, model: str) -> None:
    _, key = await both.tenant_key()
    async with _client(both, key) as client:
        raw = await client.messages.with_raw_response.create(model=model, **_ask())
        first = await raw.parse()
        assert first.stop_reason == "tool_use"
        tool_use = next(block for block in first.content if block.type == "tool_use")
        assert tool_use.name == "get_weather" and tool_use.input
        assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
        assert Decimal(raw.headers["x-sluice-cost-usd"]) > 0 and raw.headers["request-id"]
        follow_up = _ask(
            messages=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny"}]},
            ]
        )
        second = await client.messages.create(model=model, **follow_up)
    if model == "fake-agent":  # the fake OpenAI upstream answers in text once it has a tool result
        assert second.stop_reason == "end_turn"
        assert "".join(block.text for block in second.content if block.type == "text")


@pytest.mark.parametrize("model", ["fake-agent", "claude"], ids=["openai-upstream", "anthropic-upstream"])
async def test_the_anthropic_sdk_streams_a_tool_call(both: Gateway, model: str) -> None:
    _, key = await both.tenant_key()
    async with _client(both, key) as client, client.messages.stream(model=model, **_ask()) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and "content_block_delta" in kinds and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    tool_use = next(block for block in final.content if block.type == "tool_use")
    assert tool_use.name == "get_weather" and isinstance(tool_use.input, dict) and tool_use.input
    assert final.usage.output_tokens > 0


async def test_a_streamed_text_answer_reads_whole(both: Gateway) -> None:
    _, key = await both.tenant_key()
    async with _client(both, key) as client:
        body = {"max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}
        async with client.messages.stream(model="small", **body) as stream:
            text = await stream.get_final_text()
    assert text


async def test_chat_completion_callers_reach_an_anthropic_upstream(both: Gateway, claude: FakeAnthropic) -> None:
    _, key = await both.tenant_key()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    async with openai.AsyncOpenAI(base_url=both.base_url, api_key=key, max_retries=0) as client:
        completion = await client.chat.completions.create(model="claude", messages=messages, tools=tools)
    call = completion.choices[0].message.tool_calls
    assert call and call[0].function.name == "get_weather"
    sent = claude.requests[-1]
    assert sent["headers"]["anthropic-version"] == "2023-06-01" and sent["json"]["system"]


async def test_errors_are_in_anthropics_shape_with_its_rate_limit_headers(both: Gateway) -> None:
    _, key = await both.tenant_key(rpm=1)
    async with _client(both, key) as client:
        ok = await client.messages.with_raw_response.create(
            model="small", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
        assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
        assert ok.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model="small", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    async with httpx.AsyncClient(base_url=both.base) as http:
        unauthorised = await http.post("/v1/messages", headers={"x-api-key": "sk-nope"}, json={})
        bad = await http.post(
            "/v1/messages", headers={"x-api-key": key}, json={"model": "small", "max_tokens": 1, "messages": "x"}
        )
    assert unauthorised.status_code == 401
    assert unauthorised.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": unauthorised.json()["error"]["message"]},
    }
    assert bad.status_code in (400, 429)


async def test_count_tokens_counts_without_calling_or_charging(both: Gateway, fake: FakeUpstream) -> None:
    _, key = await both.tenant_key(rpm=1)
    before = sum(fake.calls.values())
    async with _client(both, key) as client:
        short = await client.messages.count_tokens(model="small", messages=[{"role": "user", "content": "Hi"}])
        longer = await client.messages.count_tokens(
            model="small", system="Be brief.", messages=[{"role": "user", "content": "Hi " * 50}]
        )
        assert 0 < short.input_tokens < longer.input_tokens
        await client.messages.create(model="small", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert sum(fake.calls.values()) == before, "counted locally, never sent upstream"
    async with httpx.AsyncClient(base_url=both.base) as http:
        refused = await http.post("/v1/messages/count_tokens", json={"model": "small", "messages": []})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
