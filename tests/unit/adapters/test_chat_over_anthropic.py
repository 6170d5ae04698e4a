"""Chat over an Anthropic upstream: chat requests translated to Messages, Messages answers and events back to chat."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.adapters.chat_over_anthropic import (
    AnthropicStreamError,
    ChunksFromEvents,
    to_chat_completion,
    to_messages,
)
from gateway.adapters.messages_over_chat import MessagesStream, UnsupportedFeatureError, to_chat
from tests.fakes.anthropic_upstream import ANSWER, TOOL_INPUT, USAGE, message_body, stream_frames

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def payload(**fields: Any) -> dict[str, Any]:
    return {"model": "alias", "messages": [{"role": "user", "content": "Hi"}], **fields}


def data_of(frames: list[bytes]) -> list[dict[str, Any]]:
    """The decoded `data:` of each SSE frame."""
    return [msgspec.json.decode(frame.split(b"\ndata: ", 1)[1]) for frame in frames]


def replay(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chunks = ChunksFromEvents(model="claude-x", created=7)
    return [chunk for event in events for chunk in chunks.feed(event)]


def assembled(chunks: list[dict[str, Any]]) -> tuple[str, dict[int, dict[str, str]]]:
    """Text and tool calls joined from chunk deltas, as chat clients join them."""
    text = ""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
            for delta in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.get("id") or ""
                call["name"] += delta["function"].get("name") or ""
                call["arguments"] += delta["function"].get("arguments") or ""
    return text, calls


# --- to_messages -----------------------------------------------------------------------------------


def test_to_messages_translates_a_tool_using_conversation() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "18 °C"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "9 °C"}]},
        {"role": "user", "content": "Thanks.", "name": "ann"},
        {"role": "user", "content": "Which is warmer?"},
    ]
    body = to_messages(
        payload(messages=messages, tools=TOOLS, tool_choice="required", stop="END", user="u-1", stream=True),
        "claude-x",
        1024,
    )
    assert body == {
        "model": "claude-x",
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Oslo?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_call_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_call_b", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_call_a",
                        "content": [{"type": "text", "text": "18 °C"}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_call_b",
                        "content": [{"type": "text", "text": "9 °C"}],
                    },
                    {"type": "text", "text": "Thanks."},
                    {"type": "text", "text": "Which is warmer?"},
                ],
            },
        ],
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "stream": True,
    }


def test_to_messages_turns_image_urls_into_image_sources() -> None:
    content = [
        {"type": "text", "text": "Compare."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]
    body = to_messages(payload(messages=[{"role": "user", "content": content}]), "claude-x", 64)
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("fields", "max_tokens"),
    [({}, 64), ({"max_tokens": 10}, 10), ({"max_tokens": 10, "max_completion_tokens": 20}, 20)],
    ids=["default", "max_tokens", "max_completion_tokens-wins"],
)
def test_to_messages_always_sends_a_completion_limit(fields: dict[str, Any], max_tokens: int) -> None:
    assert to_messages(payload(**fields), "claude-x", 64)["max_tokens"] == max_tokens


def test_to_messages_clamps_temperature_and_keeps_sampling_fields() -> None:
    body = to_messages(payload(temperature=1.7, top_p=0.5, top_k=40), "claude-x", 64)
    assert (body["temperature"], body["top_p"], body["top_k"]) == (1.0, 0.5, 40)


@pytest.mark.parametrize(
    ("fields", "tool_choice"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, None),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False},
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
    ],
    ids=["unset", "auto", "single-call", "none", "named-single"],
)
def test_to_messages_maps_tool_choice(fields: dict[str, Any], tool_choice: dict[str, Any] | None) -> None:
    assert to_messages(payload(tools=TOOLS, **fields), "claude-x", 64).get("tool_choice") == tool_choice


def test_to_messages_drops_what_cannot_change_the_answer() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Again"}]},
    ]
    fields = {"seed": 1, "stream_options": {"include_usage": True}, "n": 1, "logprobs": False, "frequency_penalty": 0.5}
    body = to_messages(payload(messages=messages, response_format={"type": "text"}, **fields), "claude-x", 64)
    assert body == {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Again"}]}],
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}, "tools": TOOLS}, "tool_choice"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ],
    ids=["n", "logprobs", "json-format", "logit-bias", "custom-tool", "allowed-tools", "audio", "function-role"],
)
def test_to_messages_refuses_what_anthropic_cannot_express(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as caught:
        to_messages(payload(**fields), "claude-x", 64)
    assert caught.value.param == param


def test_a_messages_request_survives_the_trip_through_chat() -> None:
    """Messages → chat (`to_chat`) → Messages (`to_messages`) gives the request back."""
    original = {
        "model": "claude-x",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": [{"type": "text", "text": "18 °C"}]},
                    {"type": "text", "text": "Thanks."},
                ],
            },
        ],
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "stream": True,
    }
    assert to_messages(to_chat(original), "claude-x", 64) == original


# --- to_chat_completion ----------------------------------------------------------------------------


def test_to_chat_completion_answers_text_and_tool_calls_with_chat_usage() -> None:
    completion = to_chat_completion(message_body("claude-tools", {}), model="claude-x", created=7)
    assert completion == {
        "id": "msg_fake1",
        "object": "chat.completion",
        "created": 7,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_fake1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": msgspec.json.encode(TOOL_INPUT).decode()},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 16,
            "completion_tokens": 6,
            "total_tokens": 22,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_to_chat_completion_maps_the_stop_reason(stop_reason: str | None, finish_reason: str) -> None:
    message = {**message_body("claude-ok", {}), "stop_reason": stop_reason}
    assert to_chat_completion(message, model="m", created=1)["choices"][0]["finish_reason"] == finish_reason


def test_to_chat_completion_skips_thinking_and_joins_text_blocks() -> None:
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Paris is "},
        {"type": "text", "text": "in France."},
    ]
    completion = to_chat_completion({**message_body("claude-ok", {}), "content": content}, model="m", created=1)
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Paris is in France.",
        "refusal": None,
    }


# --- ChunksFromEvents ------------------------------------------------------------------------------


def test_chunks_follow_chat_order_for_a_text_stream() -> None:
    chunks = replay(data_of(stream_frames("claude-ok", {})))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert assembled(chunks) == (ANSWER, {})
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1] == {
        "id": "msg_fake1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "claude-ok",
        "choices": [],
        "usage": {
            "prompt_tokens": 16,
            "completion_tokens": 6,
            "total_tokens": 22,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_chunks_carry_tool_calls_as_index_id_name_then_arguments() -> None:
    chunks = replay(data_of(stream_frames("claude-tools", {})))
    first_call_delta = next(
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    )
    assert first_call_delta == {
        "index": 0,
        "id": "toolu_fake1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    text, calls = assembled(chunks)
    assert text == "Let me check."
    assert calls == {
        0: {"id": "toolu_fake1", "name": "get_weather", "arguments": msgspec.json.encode(TOOL_INPUT).decode()}
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_chunks_give_a_tool_call_without_input_empty_object_arguments() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": USAGE}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    assert assembled(replay(events))[1] == {0: {"id": "toolu_1", "name": "now", "arguments": "{}"}}


def test_chunks_take_the_cumulative_usage_of_message_delta() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 0, "output_tokens": 1}}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"input_tokens": 40, "output_tokens": 9, "cache_read_input_tokens": None},
        },
        {"type": "message_stop"},
    ]
    usage = replay(events)[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (40, 9)


def test_chunks_ignore_pings_thinking_and_unknown_events() -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "usage": USAGE}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "some_future_event", "index": 0},
    ]
    assert len(replay(events)) == 1


def test_chunks_raise_on_an_error_event() -> None:
    chunks = ChunksFromEvents(model="m", created=1)
    with pytest.raises(AnthropicStreamError) as caught:
        chunks.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert (caught.value.error_type, caught.value.message) == ("overloaded_error", "Overloaded")
    assert not chunks.done


def test_a_chat_stream_survives_the_trip_through_anthropic_events() -> None:
    """Chat chunks → `MessagesStream` frames → `ChunksFromEvents` give the same text, calls and usage back."""
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 7,
        "total_tokens": 27,
        "prompt_tokens_details": {"cached_tokens": 5},
    }
    call = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices, **extra}

    original = [
        chunk({"role": "assistant", "content": "Hi."}),
        chunk({"tool_calls": [call]}),
        chunk({}, "tool_calls"),
        chunk(None, usage=usage),
    ]
    stream = MessagesStream("m", "msg_1")
    frames = [frame for item in original for frame in stream.feed(item)] + stream.finish()
    back = replay(data_of(frames))
    assert assembled(back) == ("Hi.", {0: {"id": "toolu_call_a", "name": "f", "arguments": '{"a": 1}'}})
    assert back[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert back[-1]["usage"] == usage
