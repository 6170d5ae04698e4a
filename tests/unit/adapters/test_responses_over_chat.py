"""The Responses API over chat completions: request, answer and stream translation, checked against the official spec
and read back by the official `openai` SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import httpx2
import msgspec
import openai
import pytest
from openai.types.responses import FunctionToolParam

from gateway.adapters.responses_over_chat import (
    ResponsesStream,
    UnsupportedFeature,
    from_chat,
    input_items,
    output_items,
    output_text,
    to_chat,
)
from tests.openai_spec import validate

RESPONSE_ID = "resp_0123abc"
CREATED_AT = 1_767_225_600
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
SDK_TOOL = cast(FunctionToolParam, WEATHER_TOOL)
REQUEST: dict[str, Any] = {"model": "gpt-4o-mini", "input": "Weather in Paris and Tokyo?", "tools": [WEATHER_TOOL]}
USAGE = {
    "prompt_tokens": 31,
    "completion_tokens": 12,
    "total_tokens": 43,
    "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0},
}
TEXT = "It is 21 °C and sunny in Paris — 東京 is cloudy. 🚀"


def _call(call_id: str, city: str) -> dict[str, Any]:
    arguments = msgspec.json.encode({"city": city}).decode()
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def _completion(finish_reason: str = "stop", logprobs: Any = None, **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_767_225_599,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None, **message},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
    }


TOKENS = [
    {
        "token": t,
        "logprob": -0.25,
        "bytes": list(t.encode()),
        "top_logprobs": [{"token": t, "logprob": -0.25, "bytes": None}],
    }
    for t in ("Par", "is", ".")
]
ANSWERS: dict[str, dict[str, Any]] = {
    "text": _completion(content=TEXT),
    "tool-calls": _completion("tool_calls", tool_calls=[_call("call_1", "Paris"), _call("call_2", "Tokyo")]),
    "text-and-tool-calls": _completion("tool_calls", content="Let me check.", tool_calls=[_call("call_1", "Paris")]),
    "length-truncated": _completion("length", content="It is 21 °C and sun"),
    "length-truncated-tool-call": _completion(
        "length", tool_calls=[{**_call("call_1", "Paris"), "function": {"name": "get_weather", "arguments": '{"ci'}}]
    ),
    "content-filtered": _completion("content_filter", content="It is"),
    "refusal": _completion(refusal="I can't help with that."),
    "empty": _completion(content=""),
    "logprobs": _completion(content="Paris.", logprobs={"content": TOKENS, "refusal": None}),
}


def _chunks(completion: dict[str, Any], piece_chars: int) -> list[dict[str, Any]]:
    """The chunks a chat upstream streams for `completion` (role delta, text, tool calls, finish, then usage)."""
    head = {key: completion[key] for key in ("id", "model", "created", "service_tier")} | {
        "object": "chat.completion.chunk"
    }
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choices = [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        return {**head, "choices": choices, "usage": None}

    def pieces(text: str) -> list[str]:
        return [text[start : start + piece_chars] for start in range(0, len(text), piece_chars)]

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [
        chunk({"content": piece}, logprobs=choice["logprobs"] if at == 0 else None)
        for at, piece in enumerate(pieces(message.get("content") or ""))
    ]
    chunks += [chunk({"refusal": piece}) for piece in pieces(message.get("refusal") or "")]
    for index, call in enumerate(message.get("tool_calls") or []):
        opening = {**call, "index": index, "function": {"name": call["function"]["name"], "arguments": ""}}
        chunks.append(chunk({"tool_calls": [opening]}))
        fragments = pieces(call["function"]["arguments"])
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": f}}]}) for f in fragments]
    chunks.append(chunk({}, choice["finish_reason"]))
    chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks


def _stream(completion: dict[str, Any], request: dict[str, Any] = REQUEST, piece_chars: int = 5) -> list[bytes]:
    stream = ResponsesStream(request, RESPONSE_ID, CREATED_AT)
    frames = stream.start()
    for chunk in _chunks(completion, piece_chars):
        frames += stream.feed(chunk)
    return frames + stream.finish()


def _events(frames: list[bytes]) -> list[dict[str, Any]]:
    events = []
    for frame in frames:
        head, data = frame.removesuffix(b"\n\n").split(b"\n")
        event = msgspec.json.decode(data.removeprefix(b"data: "))
        assert head == b"event: " + event["type"].encode()
        events.append(event)
    return events


def _from_chat(name: str, request: dict[str, Any] = REQUEST) -> dict[str, Any]:
    return from_chat(ANSWERS[name], request=request, response_id=RESPONSE_ID, created_at=CREATED_AT)


def _translate(request: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    validate(request, "CreateResponse")
    chat = to_chat(request, history or [])
    validate(chat, "CreateChatCompletionRequest")
    return chat


# ---- to_chat: messages ----


def test_string_input_is_one_user_message_after_the_instructions_as_system() -> None:
    chat = _translate({"model": "m", "instructions": "Be brief.", "input": "Hi"})
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": False,
    }


def test_messages_keep_their_role_and_map_each_content_part() -> None:
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}
    document = {"type": "input_file", "file_id": "file-1", "filename": "a.pdf"}
    chat = _translate(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be kind."}]},
                {"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, image, document]},
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "A cat.", "annotations": [], "logprobs": []},
                        {"type": "refusal", "refusal": "No more."},
                    ],
                },
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "developer", "content": "Answer in French."},
        {"role": "system", "content": "Be kind."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "A cat."}, {"type": "refusal", "refusal": "No more."}],
        },
    ]


def test_a_single_text_part_is_sent_as_plain_content_and_several_as_parts() -> None:
    one = [{"type": "input_text", "text": "Hi."}]
    two = [{"type": "input_text", "text": "Hi."}, {"type": "input_text", "text": " Again."}]
    chat = _translate({"model": "m", "input": [{"role": "user", "content": one}, {"role": "user", "content": two}]})
    assert [message["content"] for message in chat["messages"]] == [
        "Hi.",
        [{"type": "text", "text": "Hi."}, {"type": "text", "text": " Again."}],
    ]


def test_function_calls_join_the_assistant_turn_before_them_and_outputs_become_tool_messages() -> None:
    chat = _translate(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather in Paris and Tokyo?"},
                {"role": "assistant", "content": "Checking both."},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "21 °C"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "9 °C"}]},
                {"type": "function_call", "call_id": "c3", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            ],
        }
    )
    call = {"type": "function", "function": {"name": "get_weather"}}
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {"id": "c1", **call, "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "c2", **call, "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "21 °C"},
        {"role": "tool", "tool_call_id": "c2", "content": "9 °C"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c3", **call, "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}],
        },
    ]


def test_a_multi_turn_history_replays_in_order_with_only_this_turns_instructions() -> None:
    """Turn 1's input and output items (text + two calls) come first; turn 2 brings the tool outputs."""
    first = {**REQUEST, "instructions": "Use tools."}
    answered = from_chat(
        ANSWERS["text-and-tool-calls"] | {"choices": [ANSWERS["tool-calls"]["choices"][0]]},
        request=first,
        response_id="resp_turn1",
        created_at=CREATED_AT,
    )
    history = input_items(first) + output_items(answered)
    second = {
        "model": "gpt-4o-mini",
        "previous_response_id": "resp_turn1",
        "instructions": "Answer in one sentence.",
        "tools": [WEATHER_TOOL],
        "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "21 °C"},
            {"type": "function_call_output", "call_id": "call_2", "output": "9 °C"},
        ],
    }
    assert _translate(second, history)["messages"] == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("call_1", "Paris"), _call("call_2", "Tokyo")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 °C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "9 °C"},
    ]


def test_replayed_assistant_text_carries_the_calls_that_followed_it() -> None:
    answered = _from_chat("text-and-tool-calls")
    chat = _translate({"model": "m", "input": "continue"}, input_items(REQUEST) + output_items(answered))
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [_call("call_1", "Paris")],
    }


def test_reasoning_items_are_dropped() -> None:
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Think."}]}
    chat = _translate({"model": "m", "input": [reasoning, {"role": "user", "content": "Hi"}]})
    assert chat["messages"] == [{"role": "user", "content": "Hi"}]


# ---- to_chat: options ----


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]},
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
        ),
    ],
    ids=["auto", "none", "required", "function", "allowed-tools"],
)
def test_function_tools_and_tool_choice_map_to_chat(tool_choice: Any, expected: Any) -> None:
    chat = _translate({**REQUEST, "tool_choice": tool_choice, "parallel_tool_calls": False})
    function = {key: WEATHER_TOOL[key] for key in ("name", "description", "parameters", "strict")}
    assert chat["tools"] == [{"type": "function", "function": function}]
    assert chat["tool_choice"] == expected
    assert chat["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("text_format", "response_format"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True},
            {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}},
        ),
    ],
    ids=["text", "json-object", "json-schema"],
)
def test_text_format_maps_to_response_format(text_format: Any, response_format: Any) -> None:
    chat = _translate({"model": "m", "input": "Hi", "text": {"format": text_format, "verbosity": "low"}})
    assert chat.get("response_format") == response_format
    assert chat["verbosity"] == "low"


def test_sampling_and_limits_map_and_gateway_only_fields_are_dropped() -> None:
    chat = _translate(
        {
            "model": "m",
            "input": "Hi",
            "max_output_tokens": 256,
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "end-user-7",
            "reasoning": {"effort": "low", "summary": "auto"},
            "metadata": {"ticket": "42"},
            "store": True,
            "previous_response_id": "resp_earlier",
            "truncation": "disabled",
            "include": ["reasoning.encrypted_content"],
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "end-user-7",
        "reasoning_effort": "low",
        "max_completion_tokens": 256,
        "stream": False,
    }


def test_a_stream_always_asks_the_upstream_for_usage() -> None:
    chat = _translate({"model": "m", "input": "Hi", "stream": True})
    assert (chat["stream"], chat["stream_options"]) == (True, {"include_usage": True})


def test_included_logprobs_ask_the_upstream_for_logprobs() -> None:
    asked = _translate({"model": "m", "input": "Hi", "include": ["message.output_text.logprobs"], "top_logprobs": 3})
    assert (asked["logprobs"], asked["top_logprobs"]) == (True, 3)
    assert "logprobs" not in _translate({"model": "m", "input": "Hi", "top_logprobs": 3})


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER_TOOL, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"truncation": "auto"}, "truncation"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": "Hi"}, {"type": "web_search_call", "id": "ws_1"}]}, "input[1].type"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f1"}]}]},
        "input[0].content[0].file_id",
    ),
    (
        {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x.test/a.png"}]}]},
        "input[0].content[0]",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x.test/a.pdf"}]}]},
        "input[0].content[0].file_url",
    ),
    (
        {
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_image", "image_url": "https://x.test/a.png"}],
                }
            ]
        },
        "input[0].output[0]",
    ),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED, ids=[param for _, param in REFUSED])
def test_what_chat_cannot_honour_is_refused_naming_the_field(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedFeature) as refused:
        to_chat({"model": "m", "input": "Hi", **extra}, [])
    assert refused.value.param == param
    assert isinstance(refused.value, ValueError)


def test_a_request_with_nothing_to_say_is_refused() -> None:
    with pytest.raises(UnsupportedFeature) as refused:
        to_chat({"model": "m"}, [])
    assert refused.value.param == "input"


# ---- from_chat ----


def test_a_text_answer_is_a_completed_response_with_one_message() -> None:
    response = _from_chat("text")
    assert {key: response[key] for key in ("id", "object", "created_at", "status", "model", "error")} == {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED_AT,
        "status": "completed",
        "model": "gpt-4o-mini-2024-07-18",
        "error": None,
    }
    assert response["output"] == [
        {
            "id": "msg_0123abc_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []}],
        }
    ]
    assert response["usage"] == {
        "input_tokens": 31,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 12,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 43,
    }
    assert output_text(response) == TEXT


def test_tool_calls_follow_the_message_as_function_call_items() -> None:
    response = _from_chat("text-and-tool-calls")
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][1] == {
        "id": "fc_0123abc_1",
        "type": "function_call",
        "status": "completed",
        "arguments": '{"city":"Paris"}',
        "call_id": "call_1",
        "name": "get_weather",
    }


def test_a_length_cut_answer_is_incomplete_for_max_output_tokens() -> None:
    response = _from_chat("length-truncated")
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_a_filtered_answer_is_incomplete_for_content_filter() -> None:
    response = _from_chat("content-filtered")
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "content_filter"})


def test_a_refusal_is_a_refusal_part() -> None:
    content = _from_chat("refusal")["output"][0]["content"]
    assert content == [{"type": "refusal", "refusal": "I can't help with that."}]


def test_logprobs_ride_on_the_output_text() -> None:
    part = _from_chat("logprobs")["output"][0]["content"][0]
    assert part["logprobs"][0] == {
        "token": "Par",
        "logprob": -0.25,
        "bytes": list(b"Par"),
        "top_logprobs": [{"token": "Par", "logprob": -0.25, "bytes": []}],
    }


def test_item_ids_are_derived_from_the_response_id() -> None:
    again = from_chat(ANSWERS["tool-calls"], request=REQUEST, response_id=RESPONSE_ID, created_at=CREATED_AT + 9)
    other = from_chat(ANSWERS["tool-calls"], request=REQUEST, response_id="resp_other", created_at=CREATED_AT)
    ids = [item["id"] for item in _from_chat("tool-calls")["output"]]
    assert ids == [item["id"] for item in again["output"]] == ["fc_0123abc_0", "fc_0123abc_1"]
    assert ids != [item["id"] for item in other["output"]]


def test_the_request_settings_are_echoed() -> None:
    request = {
        **REQUEST,
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "ping", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "temperature": 0.5,
        "max_output_tokens": 64,
        "previous_response_id": "resp_before",
        "store": False,
        "metadata": {"ticket": "42"},
        "text": {"format": {"type": "json_object"}},
    }
    response = _from_chat("text", request)
    echoed = {key: response[key] for key in request if key not in ("input", "model", "tools")}
    assert echoed == {key: value for key, value in request.items() if key not in ("input", "model", "tools")}
    ping = {"type": "function", "name": "ping", "description": None, "parameters": {"type": "object"}, "strict": None}
    assert response["tools"] == [ping]
    assert (response["parallel_tool_calls"], response["top_p"], response["service_tier"]) == (True, None, "default")


@pytest.mark.parametrize("name", ANSWERS)
def test_every_translated_answer_is_a_valid_response(name: str) -> None:
    validate(_from_chat(name), "Response")


# ---- stream ----


@pytest.mark.parametrize("piece_chars", [1, 5, 1_000])
@pytest.mark.parametrize("name", ANSWERS)
def test_every_streamed_event_is_valid_and_numbered_from_zero(name: str, piece_chars: int) -> None:
    for chunk in _chunks(ANSWERS[name], piece_chars):
        validate(chunk, "CreateChatCompletionStreamResponse")
    events = _events(_stream(ANSWERS[name], piece_chars=piece_chars))
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


@pytest.mark.parametrize("name", ANSWERS)
def test_the_streamed_response_is_the_one_from_chat_builds(name: str) -> None:
    stream = ResponsesStream(REQUEST, RESPONSE_ID, CREATED_AT)
    stream.start()
    for chunk in _chunks(ANSWERS[name], 3):
        stream.feed(chunk)
    last = _events(stream.finish())[-1]
    assert last["response"] == stream.response() == _from_chat(name)
    incomplete = name in ("length-truncated", "length-truncated-tool-call", "content-filtered")
    assert last["type"] == ("response.incomplete" if incomplete else "response.completed")


def test_a_text_stream_opens_streams_and_closes_one_message() -> None:
    events = _events(_stream(ANSWERS["text"], piece_chars=len(TEXT) // 2 + 1))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == events[1]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta") == TEXT
    assert events[6]["text"] == TEXT
    assert {event["item_id"] for event in events[3:8]} == {"msg_0123abc_0"}


def test_a_tool_call_stream_adds_each_call_then_closes_them_in_order() -> None:
    events = _events(_stream(ANSWERS["text-and-tool-calls"], piece_chars=100))
    assert [(event["type"], event.get("output_index")) for event in events[2:]] == [
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    added = events[5]["item"]
    assert (added["arguments"], added["call_id"], added["status"]) == ("", "call_1", "in_progress")
    assert events[-3]["arguments"] == '{"city":"Paris"}'


def test_an_upstream_repeating_the_tool_name_in_fragments_gives_one_call() -> None:
    stream = ResponsesStream(REQUEST, RESPONSE_ID, CREATED_AT)
    stream.start()
    for arguments in ('{"city":', '"Paris"}'):
        call = {
            "index": 0,
            "id": "call_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
        stream.feed({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})
    stream.finish()
    [item] = stream.response()["output"]
    assert (item["name"], item["call_id"], item["arguments"]) == ("get_weather", "call_9", '{"city":"Paris"}')


@pytest.mark.parametrize(
    ("code", "reported"), [("rate_limit_exceeded", "rate_limit_exceeded"), ("upstream_reset", "server_error")]
)
def test_a_broken_upstream_ends_the_stream_with_response_failed(code: str, reported: str) -> None:
    stream = ResponsesStream(REQUEST, RESPONSE_ID, CREATED_AT)
    frames = stream.start()
    for chunk in _chunks(ANSWERS["text"], 5)[:4]:
        frames += stream.feed(chunk)
    frames += stream.fail(code, "upstream connection reset")
    events = _events(frames)
    for event in events:
        validate(event, "ResponseStreamEvent")
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"] == stream.response()
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": reported, "message": "upstream connection reset"}
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


@pytest.mark.parametrize(
    "after_end",
    [
        lambda stream: stream.feed({"choices": []}),
        lambda stream: stream.finish(),
        lambda stream: stream.fail("server_error", "x"),
    ],
    ids=["feed", "finish", "fail"],
)
def test_an_ended_stream_takes_nothing_more(after_end: Callable[[ResponsesStream], Any]) -> None:
    stream = ResponsesStream(REQUEST, RESPONSE_ID, CREATED_AT)
    stream.start()
    stream.finish()
    with pytest.raises(RuntimeError):
        after_end(stream)


# ---- items from turn to turn ----


def test_input_items_give_every_input_a_type() -> None:
    assert input_items({"input": "Hi"}) == [{"type": "message", "role": "user", "content": "Hi"}]
    assert input_items({"input": [{"role": "user", "content": "Hi"}]}) == [
        {"type": "message", "role": "user", "content": "Hi"}
    ]
    assert input_items({}) == []


@pytest.mark.parametrize("name", ANSWERS)
def test_output_items_are_valid_input_items(name: str) -> None:
    items = output_items(_from_chat(name))
    assert [item["type"] for item in items] == [item["type"] for item in _from_chat(name)["output"]]
    for item in items:
        validate(item, "InputItem")


# ---- the official SDK reading it over HTTP ----


def _sdk(body: bytes, content_type: str) -> openai.AsyncOpenAI:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0)
        return httpx2.Response(200, content=body, headers={"content-type": content_type})

    http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return openai.AsyncOpenAI(api_key="sk-test", base_url="http://sluice.test/v1", http_client=http_client)


async def test_the_openai_sdk_streams_and_assembles_the_frames() -> None:
    """`responses.create(stream=True)` parses every event; `responses.stream` assembles the final response."""
    body = b"".join(_stream(ANSWERS["text-and-tool-calls"]))
    client = _sdk(body, "text/event-stream")
    try:
        stream = await client.responses.create(model="gpt-4o-mini", input="?", tools=[SDK_TOOL], stream=True)
        types = [event.type async for event in stream]
        async with client.responses.stream(model="gpt-4o-mini", input="?", tools=[SDK_TOOL]) as events:
            deltas = [event.delta async for event in events if event.type == "response.output_text.delta"]
            final = await events.get_final_response()
    finally:
        await client.close()
    assert types == [event["type"] for event in _events(_stream(ANSWERS["text-and-tool-calls"]))]
    assert "".join(deltas) == final.output_text == "Let me check."
    calls = [(item.call_id, item.name, item.arguments) for item in final.output if item.type == "function_call"]
    assert calls == [("call_1", "get_weather", '{"city":"Paris"}')]
    assert final.usage is not None
    assert final.usage.total_tokens == USAGE["total_tokens"]


async def test_the_openai_sdk_reads_a_translated_response() -> None:
    client = _sdk(msgspec.json.encode(_from_chat("text-and-tool-calls")), "application/json")
    try:
        response = await client.responses.create(model="gpt-4o-mini", input="?")
    finally:
        await client.close()
    assert response.output_text == "Let me check."
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.status == "completed"


async def test_the_openai_sdk_sees_a_broken_stream_end_in_response_failed() -> None:
    stream = ResponsesStream(REQUEST, RESPONSE_ID, CREATED_AT)
    frames = (
        stream.start() + stream.feed(_chunks(ANSWERS["text"], 5)[1]) + stream.fail("server_error", "upstream reset")
    )
    client = _sdk(b"".join(frames), "text/event-stream")
    try:
        events = [event async for event in await client.responses.create(model="m", input="?", stream=True)]
    finally:
        await client.close()
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.error is not None
    assert (failed.response.error.code, failed.response.error.message) == ("server_error", "upstream reset")
