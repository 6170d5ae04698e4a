"""`OpenAICompatProvider` against a real fake upstream: bytes pass through, every failure is an `UpstreamError`."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from gateway.providers.base import (
    UpstreamCall,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamBrokenError,
    UpstreamTimeoutError,
)
from gateway.providers.openai_compat import OpenAICompatProvider
from gateway.schema.openai import chat_request_decoder
from gateway.settings import OpenAIDeployment, Timeouts
from tests.fakes.upstream import TOOL_ARGUMENTS, FakeUpstream

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
ProviderFactory = Callable[..., OpenAICompatProvider]


@pytest.fixture(name="fake", scope="module")
async def fx_fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(name="make_provider")
async def fx_make_provider(fake: FakeUpstream) -> AsyncIterator[ProviderFactory]:
    providers: list[OpenAICompatProvider] = []

    def make(
        model: str = "fake-ok", *, timeouts: Timeouts | None = None, api_key: str | None = None, **fields: Any
    ) -> OpenAICompatProvider:
        deployment = OpenAIDeployment(
            name=f"dep-{model}",
            base_url=fields.pop("base_url", fake.base_url),
            model=model,
            timeouts=timeouts or Timeouts(),
            **fields,
        )
        provider = OpenAICompatProvider(deployment, api_key)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


def make_call(*, stream: bool = False, content: str = "Hello", **fields: Any) -> UpstreamCall:
    payload: dict[str, Any] = {"model": "client-alias", "messages": [{"role": "user", "content": content}], **fields}
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    request = chat_request_decoder.decode(msgspec.json.encode(payload))
    return UpstreamCall(request=request, payload=payload, request_id="req-1")


async def collect(provider: OpenAICompatProvider, call: UpstreamCall) -> list[bytes]:
    return [payload async for payload in provider.stream(call)]


def decoded(events: list[bytes]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(event) for event in events]


# --- pass-through --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("fake-ok", {}),
        ("fake-tools", {"tools": TOOLS, "tool_choice": "required"}),
        ("fake-logprobs", {"logprobs": True, "top_logprobs": 2}),
        ("fake-usage-12-34", {}),
    ],
    ids=["ok", "tools", "logprobs", "usage"],
)
async def test_complete_returns_the_upstream_body_byte_for_byte(
    fake: FakeUpstream, make_provider: ProviderFactory, model: str, fields: dict[str, Any]
) -> None:
    body = await make_provider(model).complete(make_call(**fields))
    assert body == fake.requests[-1]["response"]
    answer = msgspec.json.decode(body)
    if model == "fake-tools":
        assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS
    if model == "fake-logprobs":
        assert answer["choices"][0]["logprobs"]["content"]
    if model == "fake-usage-12-34":
        assert answer["usage"]["prompt_tokens"] == 12
        assert answer["usage"]["completion_tokens"] == 34


async def test_complete_sends_the_payload_with_the_deployment_model_and_key(
    fake: FakeUpstream, make_provider: ProviderFactory
) -> None:
    call = make_call(content="nonce:n123", temperature=0.5, some_future_field={"kept": True})
    body = await make_provider("fake-ok", api_key="sk-upstream").complete(call)
    received = fake.requests[-1]
    assert received["method"] == "POST"
    assert received["path"] == "/v1/chat/completions"
    assert received["headers"]["Authorization"] == "Bearer sk-upstream"
    assert received["json"] == {**call.payload, "model": "fake-ok"}
    assert b"nonce:n123" in body
    assert call.payload["model"] == "client-alias"


async def test_complete_sends_no_authorization_without_a_key(
    fake: FakeUpstream, make_provider: ProviderFactory
) -> None:
    await make_provider("fake-ok").complete(make_call())
    assert "Authorization" not in fake.requests[-1]["headers"]


async def test_complete_asks_for_a_plain_body_even_if_the_payload_says_stream(
    fake: FakeUpstream, make_provider: ProviderFactory
) -> None:
    body = await make_provider("fake-ok").complete(make_call(stream=True))
    assert fake.requests[-1]["json"]["stream"] is False
    assert "stream_options" not in fake.requests[-1]["json"]
    assert msgspec.json.decode(body)["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("fake-ok", {}),
        ("fake-tools", {"tools": TOOLS, "tool_choice": "required"}),
        ("fake-logprobs", {"logprobs": True}),
        ("fake-usage-5-6", {}),
    ],
    ids=["ok", "tools", "logprobs", "usage"],
)
async def test_stream_yields_every_upstream_event_byte_for_byte(
    fake: FakeUpstream, make_provider: ProviderFactory, model: str, fields: dict[str, Any]
) -> None:
    events = await collect(make_provider(model), make_call(stream=True, **fields))
    assert events == fake.requests[-1]["events"]
    assert decoded(events)[-1]["choices"] == []
    assert decoded(events)[-1]["usage"]["total_tokens"] > 0


async def test_stream_reassembles_a_tool_call_from_fragments(make_provider: ProviderFactory) -> None:
    events = decoded(await collect(make_provider("fake-tools"), make_call(stream=True, tools=TOOLS)))
    arguments = "".join(
        call["function"]["arguments"]
        for event in events
        for choice in event["choices"]
        for call in choice["delta"].get("tool_calls", ())
    )
    assert arguments == TOOL_ARGUMENTS


async def test_stream_parses_crlf_lines_bare_data_fields_and_comments(
    fake: FakeUpstream, make_provider: ProviderFactory
) -> None:
    events = await collect(make_provider("fake-crlf"), make_call(stream=True))
    assert events == fake.requests[-1]["events"]
    assert len(events) > 3


async def test_stream_without_a_usage_chunk_still_completes(make_provider: ProviderFactory) -> None:
    events = decoded(await collect(make_provider("fake-no-usage-stream"), make_call(stream=True)))
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(event.get("usage") is None for event in events)


async def test_stream_abandoned_by_the_consumer_leaves_the_provider_usable(make_provider: ProviderFactory) -> None:
    provider = make_provider("fake-ok")
    events = provider.stream(make_call(stream=True))
    await anext(events)
    await events.aclose()
    assert await collect(provider, make_call(stream=True))


async def test_concurrent_calls_share_one_session(fake: FakeUpstream, make_provider: ProviderFactory) -> None:
    provider = make_provider("fake-ok", max_concurrency=4)
    bodies = await asyncio.gather(*(provider.complete(make_call(content=f"nonce:{i}")) for i in range(20)))
    assert all(f"nonce:{i}".encode() in body for i, body in enumerate(bodies))


# --- failures ------------------------------------------------------------------------------------

STATUS_CASES = [
    ("fake-500", 500, "The server had an error while processing your request.", None),
    ("fake-503", 503, "The server had an error while processing your request.", None),
    ("fake-429", 429, "Rate limit reached for requests.", 7.0),
    ("fake-400", 400, "Invalid value for 'temperature': must be at most 2.", None),
    ("fake-401", 401, "Incorrect API key provided.", None),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("model", "status", "message", "retry_after"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
async def test_non_2xx_answers_raise_status_errors_with_the_upstream_message(
    make_provider: ProviderFactory, stream: bool, model: str, status: int, message: str, retry_after: float | None
) -> None:
    provider = make_provider(model)
    with pytest.raises(UpstreamStatusError) as caught:
        if stream:
            await collect(provider, make_call(stream=True))
        else:
            await provider.complete(make_call())
    assert caught.value.status == status
    assert caught.value.message == message
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(
    ("model", "stream", "error", "fragment"),
    [
        ("fake-html", False, UpstreamProtocolError, "text/html"),
        ("fake-html", True, UpstreamProtocolError, "text/html"),
        ("fake-garbled", False, UpstreamProtocolError, "not a JSON object"),
        ("fake-huge", False, UpstreamProtocolError, "byte limit"),
        ("fake-long-line", True, UpstreamProtocolError, "SSE line"),
        ("fake-broken-stream", True, UpstreamStreamBrokenError, "without [DONE]"),
        ("fake-broken-stream", False, UpstreamStreamBrokenError, "dep-fake-broken-stream"),
        ("fake-reset-stream", True, UpstreamStreamBrokenError, "dep-fake-reset-stream"),
        ("fake-error-stream", True, UpstreamStreamBrokenError, "upstream overloaded"),
        ("fake-invalid-json-stream", True, UpstreamStreamBrokenError, "not a JSON object"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.startswith("fake") else None,
)
async def test_unsafe_upstream_responses_raise_the_matching_error(
    make_provider: ProviderFactory, model: str, stream: bool, error: type[UpstreamError], fragment: str
) -> None:
    provider = make_provider(model)
    with pytest.raises(error) as caught:
        if stream:
            await collect(provider, make_call(stream=True))
        else:
            await provider.complete(make_call())
    assert type(caught.value) is error
    assert fragment in caught.value.message


async def test_stream_yields_the_events_before_an_error_event(make_provider: ProviderFactory) -> None:
    received: list[bytes] = []
    with pytest.raises(UpstreamStreamBrokenError):
        async for event in make_provider("fake-error-stream").stream(make_call(stream=True)):
            received.append(event)
    assert len(received) == 2


async def test_huge_body_is_abandoned_without_reading_it_all(make_provider: ProviderFactory) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamProtocolError):
        await make_provider("fake-huge").complete(make_call())
    assert time.monotonic() - started < 2


async def test_redirect_is_never_followed(fake: FakeUpstream, make_provider: ProviderFactory) -> None:
    connections = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    canary = await asyncio.start_server(count, "127.0.0.1", 0)
    port = canary.sockets[0].getsockname()[1]
    fake.redirect_url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        with pytest.raises(UpstreamStatusError) as caught:
            await make_provider("fake-redirect").complete(make_call())
        with pytest.raises(UpstreamStatusError):
            await collect(make_provider("fake-redirect"), make_call(stream=True))
    finally:
        canary.close()
        await canary.wait_closed()
    assert caught.value.status == 302
    assert connections == 0


SMALL = Timeouts(connect_s=1.0, first_byte_s=0.5, idle_s=0.5)


@pytest.mark.parametrize(
    ("model", "stream", "fragment"),
    [
        ("fake-slow", False, "no response headers within 0.5 s"),
        ("fake-slow", True, "no response headers within 0.5 s"),
        ("fake-stall-stream", True, "no progress for 0.5 s"),
        ("fake-stall-stream", False, "no progress for 0.5 s"),
    ],
    ids=["slow-complete", "slow-stream", "stall-stream", "stall-complete"],
)
async def test_silent_upstream_raises_timeout_within_the_deadline(
    make_provider: ProviderFactory, model: str, stream: bool, fragment: str
) -> None:
    provider = make_provider(model, timeouts=SMALL)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as caught:
        if stream:
            await collect(provider, make_call(stream=True))
        else:
            await provider.complete(make_call())
    assert time.monotonic() - started < 0.5 + 1
    assert fragment in caught.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_trickling_upstream_raises_timeout_within_the_idle_deadline(
    fake: FakeUpstream, make_provider: ProviderFactory, stream: bool
) -> None:
    """One byte every 0.1 s never leaves the socket silent for 0.5 s, yet the call ends by 0.5 s + 1 s (T15)."""
    fake.trickle_s = 0.1
    provider = make_provider("fake-trickle", timeouts=SMALL)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeoutError):
            if stream:
                await collect(provider, make_call(stream=True))
            else:
                await provider.complete(make_call())
    finally:
        fake.trickle_s = 2.0
    assert time.monotonic() - started < 0.5 + 1


async def test_refused_connection_raises_connect_error(make_provider: ProviderFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = make_provider("fake-ok", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(UpstreamConnectError) as caught:
        await provider.complete(make_call())
    with pytest.raises(UpstreamConnectError):
        await collect(provider, make_call(stream=True))
    assert "Connection refused" in caught.value.message
    assert str(port) not in caught.value.message
