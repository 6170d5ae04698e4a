"""Messages API over chat: requests translated to chat, chat answers and streams translated back.

The official `anthropic` SDK reads the answers and frames over HTTP (`httpx2.MockTransport`), so what an
Anthropic client sees is asserted with that client's own parser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest
from anthropic.types import ToolParam

from gateway.adapters.messages_over_chat import (
    MessagesStream,
    TranslationError,
    UnsupportedFeatureError,
    error_body,
    from_chat,
    to_chat,
)

WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
USAGE = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27, "prompt_tokens_details": {"cached_tokens": 5}}


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-alias", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}], **fields}


def completion(message: dict[str, Any], finish_reason: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason, **choice}],
        "usage": USAGE,
    }


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
        **extra,
    }


def tool_delta(index: int, arguments: str, *, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({"content": " there."}),
    chunk({}, "stop"),
    chunk(None, usage=USAGE),
]
TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": "Checking."}),
    chunk(tool_delta(0, "", call_id="call_a", name="get_weather")),
    chunk(tool_delta(0, '{"city": ')),
    chunk(tool_delta(0, '"Paris"}')),
    chunk(tool_delta(1, '{"city": "Oslo"}', call_id="call_b", name="get_weather")),
    chunk({}, "tool_calls"),
    chunk(None, usage=USAGE),
]


def frames_for(chunks: list[dict[str, Any]]) -> list[bytes]:
    stream = MessagesStream("claude-alias", "msg_1")
    frames = [frame for item in chunks for frame in stream.feed(item)]
    return frames + stream.finish()


def events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for frame in frames:
        assert frame.endswith(b"\n\n")
        event_line, data_line = frame.removesuffix(b"\n\n").split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        data = msgspec.json.decode(data_line[6:])
        assert data["type"] == event_line[7:].decode()
        parsed.append((data["type"], data))
    return parsed


# --- to_chat ---------------------------------------------------------------------------------------


def test_to_chat_translates_a_tool_using_conversation() -> None:
    body = request(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "…", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 °C"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[WEATHER_TOOL],
        stop_sequences=["END"],
        temperature=0.2,
        top_p=0.9,
        metadata={"user_id": "u-42"},
    )
    assert to_chat(body) == {
        "model": "claude-alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18 °C"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_completion_tokens": 256,
        "stop": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-42",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": WEATHER_TOOL["input_schema"],
                    "description": "Weather for a city.",
                },
            }
        ],
    }


def test_to_chat_puts_tool_results_first_in_order_and_their_images_in_the_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
    content = [
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": [{"type": "text", "text": "a1"}, image]},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_b",
            "content": [{"type": "text", "text": "boom"}],
            "is_error": True,
        },
        {"type": "tool_result", "tool_use_id": "toolu_c"},
    ]
    chat = to_chat(request(messages=[{"role": "user", "content": content}]))
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "a1"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: boom"},
        {"role": "tool", "tool_call_id": "toolu_c", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "text", "text": "Here you go."},
            ],
        },
    ]


def test_to_chat_keeps_several_system_blocks_and_url_images_as_parts() -> None:
    system = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    image = {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.png"}}
    chat = to_chat(request(system=system, messages=[{"role": "user", "content": [image]}]))
    assert chat["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}}]},
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False},
        ),
    ],
    ids=["auto", "any", "none", "named-single"],
)
def test_to_chat_maps_tool_choice(tool_choice: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = to_chat(request(tools=[WEATHER_TOOL], tool_choice=tool_choice))
    assert {key: chat[key] for key in expected} == expected
    assert ("parallel_tool_calls" in chat) == ("parallel_tool_calls" in expected)


def test_to_chat_streams_with_usage() -> None:
    chat = to_chat(request(stream=True))
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


def test_to_chat_drops_what_cannot_change_the_answer() -> None:
    chat = to_chat(
        request(
            top_k=5,
            service_tier="auto",
            cache_control={"type": "ephemeral"},
            thinking={"type": "disabled"},
            metadata={},
        )
    )
    assert chat == {
        "model": "claude-alias",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 256,
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.test", "name": "m"}]}, "mcp_servers"),
        ({"output_config": {"effort": "high"}}, "output_config"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "messages[0].content[0].source.type",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is ("}]},
            "messages[1]",
        ),
    ],
    ids=["thinking", "mcp", "output-config", "server-tool", "five-stops", "document", "file-image", "prefill"],
)
def test_to_chat_refuses_what_chat_cannot_express(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as caught:
        to_chat(request(**fields))
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 1, "messages": "Hi"}, "messages"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": 5, "max_tokens": 1, "messages": []}, "model"),
    ],
    ids=["no-max-tokens", "messages-not-array", "bad-role", "block-without-type", "model-not-string"],
)
def test_to_chat_names_the_malformed_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        to_chat(body)
    assert caught.value.param == param
    assert not isinstance(caught.value, UnsupportedFeatureError)


# --- from_chat -------------------------------------------------------------------------------------


def test_from_chat_answers_text_with_anthropic_usage() -> None:
    message = from_chat(
        completion({"role": "assistant", "content": "Hello."}), model="claude-alias", message_id="msg_1"
    )
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-alias",
        "content": [{"type": "text", "text": "Hello."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 15,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5,
        },
    }


def test_from_chat_turns_tool_calls_into_tool_use_blocks() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "chatcmpl-tool:7", "type": "function", "function": {"name": "noop", "arguments": ""}},
        {"type": "function", "function": {"name": "broken", "arguments": '{"city": "Par'}},
    ]
    message = from_chat(
        completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"),
        model="m",
        message_id="msg_9",
    )
    assert message["content"] == [
        {"type": "tool_use", "id": "toolu_call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_chatcmpl-tool_7", "name": "noop", "input": {}},
        {"type": "tool_use", "id": "toolu_msg_9_2", "name": "broken", "input": {"_raw": '{"city": "Par'}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("message", "finish_reason", "extra", "stop_reason", "stop_sequence"),
    [
        ({"content": "x"}, "stop", {}, "end_turn", None),
        ({"content": "x"}, "length", {}, "max_tokens", None),
        ({"content": "x"}, "content_filter", {}, "refusal", None),
        ({"content": None, "refusal": "I can't help with that."}, "stop", {}, "refusal", None),
        ({"content": "x"}, "stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ({"content": "x"}, "stop", {"stop_reason": 128009}, "end_turn", None),
        (
            {"content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
            "stop",
            {},
            "tool_use",
            None,
        ),
    ],
    ids=["stop", "length", "content-filter", "refusal", "vllm-stop-string", "vllm-stop-token", "tools-said-stop"],
)
def test_from_chat_maps_the_stop_reason(
    message: dict[str, Any], finish_reason: str, extra: dict[str, Any], stop_reason: str, stop_sequence: str | None
) -> None:
    answer = from_chat(
        completion({"role": "assistant", **message}, finish_reason, **extra), model="m", message_id="msg"
    )
    assert (answer["stop_reason"], answer["stop_sequence"]) == (stop_reason, stop_sequence)


def test_from_chat_survives_an_answer_without_choices_or_usage() -> None:
    answer = from_chat({"object": "chat.completion"}, model="m", message_id="msg")
    assert answer["content"] == []
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"]["input_tokens"] == 0


# --- MessagesStream --------------------------------------------------------------------------------


def test_stream_frames_text_in_anthropic_event_order() -> None:
    parsed = events(frames_for(TEXT_CHUNKS))
    assert [name for name, _ in parsed] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = parsed[0][1]["message"]
    assert (start["id"], start["model"], start["content"], start["usage"]["input_tokens"]) == (
        "msg_1",
        "claude-alias",
        [],
        0,
    )
    assert parsed[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [data["delta"]["text"] for name, data in parsed if name == "content_block_delta"] == ["Hello", " there."]
    assert parsed[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert parsed[-2][1]["usage"] == {
        "input_tokens": 15,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 5,
    }


def test_stream_frames_tool_calls_as_tool_use_blocks() -> None:
    parsed = events(frames_for(TOOL_CHUNKS))
    starts = [data["content_block"] for name, data in parsed if name == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_call_a", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_call_b", "name": "get_weather", "input": {}},
    ]
    json_by_block: dict[int, str] = {}
    for name, data in parsed:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            json_by_block[data["index"]] = json_by_block.get(data["index"], "") + data["delta"]["partial_json"]
    assert json_by_block == {1: '{"city": "Paris"}', 2: '{"city": "Oslo"}'}
    assert [data["index"] for name, data in parsed if name == "content_block_stop"] == [0, 1, 2]
    assert parsed[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_opens_a_tool_block_once_its_name_arrives() -> None:
    """Some upstreams send the call id before the name: arguments wait, the block starts named."""
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "lookup", "arguments": '{"q":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "a"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    parsed = events(frames_for(chunks))
    assert parsed[1][1]["content_block"] == {"type": "tool_use", "id": "toolu_call_x", "name": "lookup", "input": {}}
    partial = "".join(d["delta"]["partial_json"] for n, d in parsed if n == "content_block_delta")
    assert partial == '{"q": "a"}'


def test_stream_reports_a_stop_sequence_the_upstream_names() -> None:
    chunks = [
        chunk({"content": "x"}),
        {**chunk({}, "stop"), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]},
    ]
    parsed = events(frames_for(chunks))
    assert parsed[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_stream_without_chunks_still_makes_a_whole_message() -> None:
    parsed = events(MessagesStream("m", "msg").finish())
    assert [name for name, _ in parsed] == ["message_start", "message_delta", "message_stop"]
    assert parsed[1][1]["usage"] == {"output_tokens": 0}


def test_stream_failure_is_one_terminal_error_event() -> None:
    stream = MessagesStream("m", "msg")
    stream.feed(TEXT_CHUNKS[1])
    parsed = events(stream.fail("overloaded_error", "upstream overloaded"))
    assert parsed == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "upstream overloaded"}})
    ]
    assert stream.feed(TEXT_CHUNKS[2]) == []
    assert stream.finish() == []


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (507, "api_error"),
    ],
)
def test_error_body_uses_anthropic_error_types(status: int, error_type: str) -> None:
    assert error_body(status, "nope") == {"type": "error", "error": {"type": error_type, "message": "nope"}}


# --- the official SDK reads what we send -----------------------------------------------------------

Handler = Callable[[dict[str, Any]], httpx2.Response]


def sdk_client(answer: Handler, seen: list[dict[str, Any]]) -> anthropic.AsyncAnthropic:
    """An SDK client whose requests go through `to_chat` (as the gateway's endpoint does) and get `answer`."""

    async def handler(req: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0)
        chat = to_chat(msgspec.json.decode(req.content))
        seen.append(chat)
        return answer(chat)

    http_client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test", base_url="http://sluice.test", http_client=http_client, max_retries=0
    )


def json_answer(chat_completion: dict[str, Any]) -> Handler:
    def answer(chat: dict[str, Any]) -> httpx2.Response:
        body = from_chat(chat_completion, model=chat["model"], message_id="msg_sdk")
        return httpx2.Response(200, content=msgspec.json.encode(body), headers={"content-type": "application/json"})

    return answer


def sse_answer(chunks: list[dict[str, Any]], *, fail_after: int | None = None) -> Handler:
    def answer(chat: dict[str, Any]) -> httpx2.Response:
        stream = MessagesStream(chat["model"], "msg_sdk")
        frames = [frame for item in chunks[:fail_after] for frame in stream.feed(item)]
        frames += stream.fail("overloaded_error", "upstream overloaded") if fail_after is not None else stream.finish()
        return httpx2.Response(200, content=b"".join(frames), headers={"content-type": "text/event-stream"})

    return answer


async def test_sdk_reads_a_non_streaming_tool_use_answer() -> None:
    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    answer = completion({"role": "assistant", "content": "Checking.", "tool_calls": calls}, "tool_calls")
    seen: list[dict[str, Any]] = []
    client = sdk_client(json_answer(answer), seen)
    try:
        message = await client.messages.create(
            model="claude-alias",
            max_tokens=100,
            system="Be brief.",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "auto"},
        )
    finally:
        await client.close()
    assert seen[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert seen[0]["tool_choice"] == "auto"
    assert message.id == "msg_sdk"
    assert message.model == "claude-alias"
    assert message.stop_reason == "tool_use"
    text, tool_use = message.content
    assert text.type == "text" and text.text == "Checking."
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("toolu_call_a", "get_weather", {"city": "Paris"})
    assert (message.usage.input_tokens, message.usage.output_tokens, message.usage.cache_read_input_tokens) == (
        15,
        7,
        5,
    )


async def test_sdk_stream_helper_assembles_text_and_tool_use() -> None:
    seen: list[dict[str, Any]] = []
    client = sdk_client(sse_answer(TOOL_CHUNKS), seen)
    try:
        async with client.messages.stream(
            model="claude-alias", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            message = await stream.get_final_message()
    finally:
        await client.close()
    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert text == "Checking."
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert [block.input for block in message.content if block.type == "tool_use"] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens, message.usage.cache_read_input_tokens) == (
        15,
        7,
        5,
    )


async def test_sdk_raw_stream_sees_every_event_type() -> None:
    client = sdk_client(sse_answer(TEXT_CHUNKS), [])
    try:
        stream = await client.messages.create(
            model="claude-alias", max_tokens=100, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        kinds = [event.type async for event in stream]
    finally:
        await client.close()
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_sdk_raises_on_a_mid_stream_error_event() -> None:
    client = sdk_client(sse_answer(TEXT_CHUNKS, fail_after=2), [])
    try:
        async with client.messages.stream(
            model="claude-alias", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            with pytest.raises(anthropic.APIStatusError, match="upstream overloaded"):
                await stream.get_final_message()
    finally:
        await client.close()


async def test_sdk_reads_an_error_body_as_its_error_class() -> None:
    def answer(chat: dict[str, Any]) -> httpx2.Response:
        body = error_body(429, "Tenant t1 is over 100 requests per minute.")
        return httpx2.Response(429, content=msgspec.json.encode(body), headers={"content-type": "application/json"})

    client = sdk_client(answer, [])
    try:
        with pytest.raises(anthropic.RateLimitError, match="over 100 requests per minute") as caught:
            await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    finally:
        await client.close()
    assert caught.value.type == "rate_limit_error"
