"""Replay and assembly across the stream boundary, checked with the official `openai` SDK's own types and parser."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import msgspec
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cache.errors import IncompleteStreamError
from cache.replay import DONE, assemble, replay_sse

USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 120,
    "total_tokens": 139,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
TEXT = "Paris is the capital of France. " * 9 + "Its name in French is « Paris » — café, naïve, 東京 🚀."


def _completion(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": choices,
        "usage": USAGE,
        **extra,
    }


def _message(**fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "refusal": None, "annotations": [], **fields}


TOKENS = [{"token": t, "logprob": -0.01, "bytes": list(t.encode()), "top_logprobs": []} for t in ("Par", "is", ".")]

SAMPLES: dict[str, dict[str, Any]] = {
    "text": _completion(
        [{"index": 0, "message": _message(content=TEXT), "logprobs": None, "finish_reason": "stop"}],
        service_tier="default",
        system_fingerprint="fp_0123",
    ),
    "empty-text": _completion(
        [{"index": 0, "message": _message(content=""), "logprobs": None, "finish_reason": "stop"}]
    ),
    "tool-calls": _completion(
        [
            {
                "index": 0,
                "message": _message(
                    tool_calls=[
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city": "Paris", "unit": "celsius"}' * 3,
                            },
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    ]
                ),
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ]
    ),
    "refusal": _completion(
        [
            {
                "index": 0,
                "message": _message(refusal="I can't help with that."),
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
    ),
    "two-choices-logprobs": _completion(
        [
            {
                "index": 0,
                "message": _message(content="Paris."),
                "logprobs": {"content": TOKENS, "refusal": None},
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": _message(content="Paris."),
                "logprobs": {"content": TOKENS, "refusal": None},
                "finish_reason": "stop",
            },
        ]
    ),
    "provider-extras": _completion(
        [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "42", "reasoning_content": "6 × 7"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
    ),
}


def _body(name: str) -> bytes:
    return msgspec.json.encode(SAMPLES[name])


def _payloads(frames: list[bytes]) -> list[bytes]:
    assert frames[-1] == DONE
    for frame in frames:
        assert frame.startswith(b"data: ")
        assert frame.endswith(b"\n\n")
        assert b"\n" not in frame[: -len(b"\n\n")]
    return [frame[len(b"data: ") : -2] for frame in frames[:-1]]


def _calls(calls: Any) -> list[tuple[str, str, str, str]]:
    return [(c.id, c.type, c.function.name, c.function.arguments) for c in calls or []]


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_replay_is_a_valid_chunk_stream_that_the_sdk_reassembles_to_the_original(
    name: str, include_usage: bool
) -> None:
    original = ChatCompletion.model_validate_json(_body(name))
    state = ChatCompletionStreamState()
    for payload in _payloads(replay_sse(_body(name), include_usage=include_usage)):
        chunk = ChatCompletionChunk.model_validate_json(payload)
        assert (chunk.id, chunk.object, chunk.created, chunk.model) == (
            original.id,
            "chat.completion.chunk",
            original.created,
            original.model,
        )
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    assert [choice.message.content for choice in final.choices] == [c.message.content for c in original.choices]
    assert [choice.message.refusal for choice in final.choices] == [c.message.refusal for c in original.choices]
    assert [choice.finish_reason for choice in final.choices] == [c.finish_reason for c in original.choices]
    assert [_calls(c.message.tool_calls) for c in final.choices] == [
        _calls(c.message.tool_calls) for c in original.choices
    ]
    assert [choice.logprobs for choice in final.choices] == [c.logprobs for c in original.choices]
    assert final.system_fingerprint == original.system_fingerprint
    assert final.usage == (original.usage if include_usage else None)


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("piece_chars", [1, 7, 64, 10_000])
def test_assembling_a_replay_gives_back_the_stored_completion(name: str, piece_chars: int) -> None:
    frames = replay_sse(_body(name), include_usage=True, piece_chars=piece_chars)
    assert msgspec.json.decode(assemble(frames)) == SAMPLES[name]


def test_replay_marks_usage_only_when_the_client_asked_for_it() -> None:
    without = [msgspec.json.decode(p) for p in _payloads(replay_sse(_body("text"), include_usage=False))]
    assert all("usage" not in chunk for chunk in without)
    with_usage = [msgspec.json.decode(p) for p in _payloads(replay_sse(_body("text"), include_usage=True))]
    assert all(chunk["usage"] is None for chunk in with_usage[:-1])
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == USAGE


def test_replay_follows_the_openai_chunk_order() -> None:
    chunks = [msgspec.json.decode(p) for p in _payloads(replay_sse(_body("tool-calls"), include_usage=False))]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert list(chunks[0]) == ["id", "object", "created", "model", "choices"]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": None}
    assert deltas[1]["tool_calls"] == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    ]
    assert deltas[2]["tool_calls"][0].keys() == {"index", "function"}
    assert deltas[-1] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])


async def test_the_openai_sdk_streams_a_replay_over_http() -> None:
    """The SDK's own HTTP stream parser and accumulator (`chat.completions.stream`) read the replayed frames."""
    frames = replay_sse(_body("text"), include_usage=True)

    async def handler(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0)
        return httpx2.Response(200, content=b"".join(frames), headers={"content-type": "text/event-stream"})

    http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    client = openai.AsyncOpenAI(api_key="sk-test", base_url="http://sluice.test/v1", http_client=http_client)
    try:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "?"}], stream=True, stream_options={"include_usage": True}
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        async with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "?"}]) as events:
            final = await events.get_final_completion()
    finally:
        await client.close()
    assert text == TEXT
    assert final.choices[0].message.content == TEXT
    assert final.usage is not None
    assert final.usage.total_tokens == USAGE["total_tokens"]


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices, **extra}


def _delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def test_assemble_joins_upstream_fragments_as_providers_send_them() -> None:
    """Fragments as vLLM and others cut them: the tool name repeated, arguments split anywhere, bytes input."""
    call = {"index": 0, "id": "call_9", "type": "function", "function": {"name": "add", "arguments": ""}}
    chunks: list[bytes | dict[str, Any]] = [
        _chunk([_delta({"role": "assistant", "content": ""})]),
        msgspec.json.encode(_chunk([_delta({"content": "Adding"})])),
        _chunk([_delta({"content": " now."})]),
        _chunk([_delta({"tool_calls": [call]})]),
        _chunk([_delta({"tool_calls": [{"index": 0, "function": {"name": "add", "arguments": '{"a": '}}]})]),
        _chunk([_delta({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})]),
        _chunk([_delta({}, "tool_calls")], system_fingerprint="fp_1"),
        _chunk([], usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
        b"[DONE]",
    ]
    assert msgspec.json.decode(assemble(chunks)) == {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Adding now.",
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "system_fingerprint": "fp_1",
    }


@pytest.mark.parametrize(
    "chunks",
    [
        [],
        [b"[DONE]"],
        [_chunk([_delta({"role": "assistant", "content": "Hal"})])],
        [
            _chunk([_delta({"role": "assistant", "content": "Hal"})]),
            {"error": {"message": "upstream reset", "type": "server_error", "param": None, "code": "upstream_error"}},
        ],
        [_chunk([], usage={"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1})],
    ],
    ids=["nothing", "only-done", "no-finish-reason", "error-event", "usage-only"],
)
def test_assemble_refuses_a_stream_that_did_not_complete(chunks: list[bytes | dict[str, Any]]) -> None:
    with pytest.raises(IncompleteStreamError):
        assemble(chunks)
