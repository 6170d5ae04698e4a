"""`AnthropicProvider` against a fake Anthropic upstream over real HTTP: chat out, Messages on the wire, chat back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from gateway.accounting.pricing import TokenUsage
from gateway.pipeline.call import usage_from
from gateway.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider
from gateway.providers.base import UpstreamCall, UpstreamStatusError, UpstreamStreamBrokenError
from gateway.schema.openai import chat_request_decoder, completion_view_decoder
from gateway.settings import AnthropicDeployment
from tests.fakes.anthropic_upstream import ANSWER, TOOL_INPUT, FakeAnthropic

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
ProviderFactory = Callable[..., AnthropicProvider]


@pytest.fixture(name="fake", scope="module")
async def fx_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(name="make_provider")
async def fx_make_provider(fake: FakeAnthropic) -> AsyncIterator[ProviderFactory]:
    providers: list[AnthropicProvider] = []

    def make(model: str = "claude-ok", **options: Any) -> AnthropicProvider:
        deployment = AnthropicDeployment(name=f"dep-{model}", base_url=fake.base_url, model=model)
        provider = AnthropicProvider(deployment, "sk-ant-test", **options)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


def make_call(*, stream: bool = False, **fields: Any) -> UpstreamCall:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    payload: dict[str, Any] = {"model": "client-alias", "messages": messages, **fields}
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    request = chat_request_decoder.decode(msgspec.json.encode(payload))
    return UpstreamCall(request=request, payload=payload, request_id="req-1")


async def collect(provider: AnthropicProvider, call: UpstreamCall) -> list[dict[str, Any]]:
    return [msgspec.json.decode(payload) async for payload in provider.stream(call)]


def tool_calls_of(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Tool calls assembled from chunk deltas as the openai SDK assembles them."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.get("id") or ""
                call["name"] += delta.get("function", {}).get("name") or ""
                call["arguments"] += delta.get("function", {}).get("arguments") or ""
    return calls


async def test_complete_answers_a_tool_call_as_a_chat_completion(make_provider: ProviderFactory) -> None:
    provider = make_provider("claude-tools")
    body = await provider.complete(make_call(tools=TOOLS))
    completion = msgspec.json.decode(body)
    choice = completion["choices"][0]
    assert completion["object"] == "chat.completion"
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_fake1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": msgspec.json.encode(TOOL_INPUT).decode()},
        }
    ]
    view = completion_view_decoder.decode(body)  # what the pipeline meters
    assert view.usage is not None
    assert usage_from(view.usage) == TokenUsage(prompt_tokens=16, completion_tokens=6, cached_tokens=3)


async def test_requests_go_to_messages_with_anthropic_headers(
    make_provider: ProviderFactory, fake: FakeAnthropic
) -> None:
    provider = make_provider("claude-tools", default_max_tokens=512)
    await provider.complete(make_call(tools=TOOLS, user="u-1"))
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-test"
    assert sent["headers"]["anthropic-version"] == ANTHROPIC_VERSION
    assert sent["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in sent["headers"]
    assert sent["json"] == {
        "model": "claude-tools",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    }


async def test_stream_relays_text_as_chat_chunks_ending_with_usage(make_provider: ProviderFactory) -> None:
    chunks = await collect(make_provider("claude-ok"), make_call(stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 16
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["id"] == "msg_fake1" for chunk in chunks)


async def test_stream_relays_tool_calls_as_chat_tool_call_deltas(
    make_provider: ProviderFactory, fake: FakeAnthropic
) -> None:
    chunks = await collect(make_provider("claude-tools"), make_call(stream=True, tools=TOOLS))
    assert fake.requests[-1]["json"]["stream"] is True
    assert tool_calls_of(chunks) == {
        0: {"id": "toolu_fake1", "name": "get_weather", "arguments": msgspec.json.encode(TOOL_INPUT).decode()}
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("model", "status", "retry_after", "message"),
    [
        ("claude-429", 429, 7.0, "per-minute rate limit"),
        ("claude-529", 529, None, "Overloaded"),
        ("claude-401", 401, None, "invalid x-api-key"),
        ("claude-400", 400, None, "roles must alternate"),
    ],
    ids=["rate-limited", "overloaded", "bad-key", "bad-request"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_error_statuses_become_status_errors_with_anthropics_message(
    make_provider: ProviderFactory, model: str, status: int, retry_after: float | None, message: str, stream: bool
) -> None:
    provider = make_provider(model)
    with pytest.raises(UpstreamStatusError) as caught:
        if stream:
            await collect(provider, make_call(stream=True))
        else:
            await provider.complete(make_call())
    assert caught.value.status == status
    assert caught.value.retry_after == retry_after
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("model", "reason"),
    [("claude-broken-stream", "before `message_stop`"), ("claude-reset-stream", "ClientPayloadError")],
    ids=["closed", "reset"],
)
async def test_stream_cut_before_message_stop_is_broken(
    make_provider: ProviderFactory, model: str, reason: str
) -> None:
    received: list[bytes] = []
    with pytest.raises(UpstreamStreamBrokenError, match=reason):
        async for payload in make_provider(model).stream(make_call(stream=True)):
            received.append(payload)
    assert received  # what came before the cut was relayed


async def test_stream_error_event_is_broken_with_anthropics_message(make_provider: ProviderFactory) -> None:
    with pytest.raises(UpstreamStreamBrokenError, match="Overloaded"):
        await collect(make_provider("claude-error-stream"), make_call(stream=True))


async def test_a_chat_feature_anthropic_lacks_is_refused_before_any_request(
    make_provider: ProviderFactory, fake: FakeAnthropic
) -> None:
    sent = len(fake.requests)
    with pytest.raises(UpstreamStatusError) as caught:
        await make_provider().complete(make_call(n=2))
    assert caught.value.status == 400
    assert "`n`" in caught.value.message
    assert len(fake.requests) == sent
