"""The simulator answers deterministically, in OpenAI's wire shapes, with usage tiktoken agrees with."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from gateway.accounting.tokens import count_prompt, count_text
from gateway.providers.base import UpstreamCall, UpstreamStatusError
from gateway.providers.simulator import VOCABULARY, Simulator
from gateway.schema.openai import chat_request_decoder
from gateway.settings import SimulatorDeployment, SimulatorOptions

PROMPTS = ["Hello", "Write a haiku about the sea.", "nonce:abc " * 40]


def make_simulator(**options: Any) -> Simulator:
    return Simulator(SimulatorDeployment(name="sim", model="small", simulator=SimulatorOptions(**options)))


def make_call(prompt: str = "Hello", request_id: str = "req-1", **fields: Any) -> UpstreamCall:
    payload = {"model": "small", "messages": [{"role": "user", "content": prompt}], **fields}
    request = chat_request_decoder.decode(msgspec.json.encode(payload))
    return UpstreamCall(request=request, payload=payload, request_id=request_id)


async def complete(simulator: Simulator, call: UpstreamCall) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.json.decode(await simulator.complete(call))
    return body


async def stream(simulator: Simulator, call: UpstreamCall) -> list[dict[str, Any]]:
    return [msgspec.json.decode(payload) async for payload in simulator.stream(call)]


def streamed_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for chunk in chunks
        for choice in chunk["choices"]
        if choice["index"] == index
    )


def test_vocabulary_words_are_single_tokens_with_a_leading_space_and_capitalised() -> None:
    for word in VOCABULARY:
        assert count_text(" " + word) == 1, word
        assert count_text(word.capitalize()) == 1, word


async def test_simulator_gives_the_same_prompt_the_same_answer() -> None:
    simulator = make_simulator()
    first = await complete(simulator, make_call("Hello", request_id="a"))
    second = await complete(simulator, make_call("Hello", request_id="b"))
    other = await complete(simulator, make_call("Goodbye", request_id="a"))
    assert first["choices"] == second["choices"]
    assert first["choices"][0]["message"]["content"] != other["choices"][0]["message"]["content"]
    assert first["id"] == other["id"]
    assert first["id"] != second["id"]
    assert first["id"].startswith("chatcmpl-")


async def test_simulator_body_has_the_openai_shape() -> None:
    body = await complete(make_simulator(), make_call())
    assert list(body) == ["id", "object", "created", "model", "choices", "usage"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "small"
    assert abs(body["created"] - time.time()) < 5
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["refusal"] is None
    assert "tool_calls" not in choice["message"]
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


@pytest.mark.parametrize("completion_tokens", [1, 16, 300])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "sentence", "long"])
async def test_simulator_usage_matches_tiktoken(prompt: str, completion_tokens: int) -> None:
    call = make_call(prompt)
    body = await complete(make_simulator(completion_tokens=completion_tokens), call)
    usage = body["usage"]
    assert usage["completion_tokens"] == completion_tokens
    assert count_text(body["choices"][0]["message"]["content"]) == completion_tokens
    assert usage["prompt_tokens"] == count_prompt(call.request)
    assert usage["total_tokens"] == usage["prompt_tokens"] + completion_tokens


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_simulator_stops_at_max_tokens_with_finish_reason_length(field: str) -> None:
    body = await complete(make_simulator(completion_tokens=16), make_call(**{field: 5}))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert count_text(body["choices"][0]["message"]["content"]) == 5


async def test_simulator_finishes_with_stop_when_max_tokens_is_not_reached() -> None:
    body = await complete(make_simulator(completion_tokens=4), make_call(max_tokens=4))
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4


async def test_simulator_refuses_a_prompt_over_the_context_window() -> None:
    with pytest.raises(UpstreamStatusError) as caught:
        await complete(make_simulator(context_window=50), make_call("word " * 100))
    assert caught.value.status == 400
    assert "maximum context length is 50 tokens" in caught.value.message


async def test_simulator_answers_n_choices_and_counts_all_of_them() -> None:
    body = await complete(make_simulator(completion_tokens=7), make_call(n=3))
    choices = body["choices"]
    assert [choice["index"] for choice in choices] == [0, 1, 2]
    assert len({choice["message"]["content"] for choice in choices}) == 3
    assert all(count_text(choice["message"]["content"]) == 7 for choice in choices)
    assert body["usage"]["completion_tokens"] == 21


async def test_simulator_returns_deterministic_logprobs_for_every_token() -> None:
    call = make_call(logprobs=True, top_logprobs=3)
    body = await complete(make_simulator(), call)
    again = await complete(make_simulator(), call)
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert "".join(entry["token"] for entry in entries) == choice["message"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    for entry in entries:
        assert entry["logprob"] < 0
        assert bytes(entry["bytes"]) == entry["token"].encode()
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert [top["logprob"] for top in entry["top_logprobs"]] == sorted(
            (top["logprob"] for top in entry["top_logprobs"]), reverse=True
        )
    assert again["choices"][0]["logprobs"] == choice["logprobs"]


async def test_simulator_logprobs_without_top_logprobs_have_empty_alternatives() -> None:
    body = await complete(make_simulator(), make_call(logprobs=True))
    assert all(entry["top_logprobs"] == [] for entry in body["choices"][0]["logprobs"]["content"])


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.mark.parametrize(
    ("tool_choice", "name"),
    [("required", "get_weather"), ({"type": "function", "function": {"name": "get_time"}}, "get_time")],
    ids=["required", "named"],
)
async def test_simulator_answers_with_a_tool_call_when_one_is_forced(tool_choice: Any, name: str) -> None:
    body = await complete(make_simulator(), make_call(tools=TOOLS, tool_choice=tool_choice))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"] == {"name": name, "arguments": "{}"}
    assert body["usage"]["completion_tokens"] == count_text(name) + count_text("{}")


@pytest.mark.parametrize("tool_choice", ["auto", None], ids=["auto", "unset"])
async def test_simulator_under_auto_calls_the_first_tool_then_answers_from_its_result(tool_choice: str | None) -> None:
    choice = {"tool_choice": tool_choice} if tool_choice else {}
    first = await complete(make_simulator(), make_call(tools=TOOLS, **choice))
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]
    payload = {"model": "small", "messages": messages, "tools": TOOLS, **choice}
    request = chat_request_decoder.decode(msgspec.json.encode(payload))
    answer = await complete(make_simulator(), UpstreamCall(request=request, payload=payload, request_id="req-2"))
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in answer["choices"][0]["message"]


async def test_simulator_never_calls_a_tool_when_tool_choice_is_none() -> None:
    body = await complete(make_simulator(), make_call(tools=TOOLS, tool_choice="none"))
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_simulator_stream_assembles_to_the_non_streaming_text() -> None:
    simulator = make_simulator(completion_tokens=12)
    body = await complete(simulator, make_call())
    chunks = await stream(simulator, make_call(stream=True))
    assert streamed_text(chunks) == body["choices"][0]["message"]["content"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["id"] == body["id"] for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)


async def test_simulator_stream_ends_with_a_usage_chunk_when_include_usage() -> None:
    chunks = await stream(
        make_simulator(completion_tokens=9), make_call(stream=True, stream_options={"include_usage": True})
    )
    *body, last = chunks
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 9
    assert count_text(streamed_text(body)) == 9
    assert all(chunk["usage"] is None for chunk in body)


async def test_simulator_stream_of_n_choices_counts_them_all() -> None:
    chunks = await stream(
        make_simulator(completion_tokens=5), make_call(n=2, stream=True, stream_options={"include_usage": True})
    )
    assert count_text(streamed_text(chunks, 0)) == 5
    assert count_text(streamed_text(chunks, 1)) == 5
    assert streamed_text(chunks, 0) != streamed_text(chunks, 1)
    assert chunks[-1]["usage"]["completion_tokens"] == 10


async def test_simulator_stream_cut_by_max_tokens_finishes_with_length() -> None:
    chunks = await stream(make_simulator(completion_tokens=16), make_call(stream=True, max_tokens=3))
    assert count_text(streamed_text(chunks)) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_simulator_stream_carries_one_logprob_per_token() -> None:
    call = make_call(stream=True, logprobs=True, top_logprobs=2)
    chunks = await stream(make_simulator(completion_tokens=6), call)
    content = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["delta"].get("content")]
    assert len(content) == 6
    for chunk in content:
        choice = chunk["choices"][0]
        (entry,) = choice["logprobs"]["content"]
        assert entry["token"] == choice["delta"]["content"]
        assert len(entry["top_logprobs"]) == 2


async def test_simulator_stream_sends_a_forced_tool_call_as_deltas() -> None:
    chunks = await stream(make_simulator(), make_call(stream=True, tools=TOOLS, tool_choice="required"))
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert first["id"].startswith("call_")
    arguments = "".join(
        call["function"]["arguments"] for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", ())
    )
    assert arguments == "{}"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_simulator_waits_latency_before_the_first_token_and_the_interval_between_tokens() -> None:
    simulator = make_simulator(latency_ms=100, token_interval_ms=20, completion_tokens=6)
    started = time.monotonic()
    chunks = simulator.stream(make_call(stream=True))
    await anext(chunks)
    first = time.monotonic() - started
    async for _ in chunks:
        pass
    total = time.monotonic() - started
    assert 0.1 <= first < 0.5
    assert total >= 0.1 + 5 * 0.02
