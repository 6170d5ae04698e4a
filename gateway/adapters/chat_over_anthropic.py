"""The chat-completions pipeline over an Anthropic Messages upstream: the chat call out, its answer back as chat.

`to_messages` turns the pipeline's chat request into a Messages request; `to_chat_completion` turns the
upstream's `message` into a `chat.completion`; `ChunksFromEvents` turns the upstream's SSE events into
`chat.completion.chunk` objects.

Request fields:

- mapped: `messages` — system and developer messages → top-level `system` text blocks (wherever they stand,
  as Anthropic has no mid-conversation system turn); user text and `image_url` parts (data URLs → `base64`
  sources, others → `url` sources); assistant text, `refusal` and `tool_calls` → `text` and `tool_use` blocks
  (`input` = the decoded arguments, non-objects kept as `{"_raw": …}`); `tool` messages → user `tool_result`
  blocks; consecutive turns of one role merged, as Anthropic requires alternating roles. Also
  `max_completion_tokens`/`max_tokens` (else the deployment's default: Anthropic requires one); `stop` →
  `stop_sequences`; `temperature` (clamped to Anthropic's 0–1); `top_p`; `top_k`; `user` (or
  `safety_identifier`) → `metadata.user_id`; function `tools`; `tool_choice` `auto`/`required`/`none`/named
  function → `auto`/`any`/`none`/`tool`; `parallel_tool_calls: false` → `disable_parallel_tool_use`; `stream`.
- dropped, as they cannot change what the answer says: `stream_options` (usage always comes), `n: 1`,
  `logprobs: false`, `seed`, `store`, `metadata`, `service_tier`, `prediction`, `prompt_cache_key`,
  `reasoning_effort`, `verbosity`, `frequency_penalty`, `presence_penalty` (sampling details),
  `response_format: text`, message `name`s, image `detail`, the `strict` flag of tools, empty text and empty
  messages (Anthropic rejects them).
- refused with `UnsupportedFeatureError`: `n` > 1, `logprobs`/`top_logprobs`, JSON `response_format`s,
  audio and file parts, `function` messages, non-function tools, `allowed_tools` choices, and every other
  field (`logit_bias`, `audio`, `modalities`, `web_search_options`, `functions`, …).

Answers: text blocks are joined; `tool_use` → `tool_calls` (`arguments` = the encoded `input`); thinking and
server-tool blocks are never asked for and are skipped. Stop reasons: `end_turn`, `stop_sequence`,
`pause_turn` → `stop`; `max_tokens`, `model_context_window_exceeded` → `length`; `tool_use` → `tool_calls`;
`refusal` → `content_filter`. Usage: `prompt_tokens` = `input_tokens` + `cache_read_input_tokens` +
`cache_creation_input_tokens`, `cached_tokens` = `cache_read_input_tokens`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gateway.adapters.messages_over_chat import tool_input, tool_use_id
from gateway.adapters.messages_over_chat.checks import (  # the value checks are shared, so are their errors
    UnsupportedFeatureError,
    as_array,
    as_object,
    as_string,
)
from gateway.schema.openai import JsonObject

_HANDLED_FIELDS: Final = frozenset({
    "model", "messages", "stream", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p", "top_k",
    "user", "safety_identifier", "tools", "tool_choice", "parallel_tool_calls", "n", "logprobs", "top_logprobs",
    "response_format",
})  # fmt: skip
_DROPPED_FIELDS: Final = frozenset({
    "stream_options", "seed", "store", "metadata", "service_tier", "prediction", "prompt_cache_key",
    "reasoning_effort", "verbosity", "frequency_penalty", "presence_penalty",
})  # fmt: skip
_FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_encoder = msgspec.json.Encoder()


class AnthropicStreamError(Exception):
    """The upstream's stream carried an `error` event (`overloaded_error`, `api_error`, …)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class _AnthropicUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


# --- request: chat → Messages ------------------------------------------------------------------------


def to_messages(payload: JsonObject, model: str, default_max_tokens: int) -> JsonObject:
    """The Messages request asking what the chat request `payload` asks, for `model` (see the module docstring)."""
    _refuse_unsupported(payload)
    system, turns = _turns(as_array(payload.get("messages"), "messages"))
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens") or default_max_tokens
    body: JsonObject = {"model": model, "max_tokens": limit, "messages": turns}
    if system:
        body["system"] = system
    if payload.get("stop"):
        stop = payload["stop"]
        body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if payload.get("temperature") is not None:
        body["temperature"] = min(payload["temperature"], 1.0)
    for name in ("top_p", "top_k"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    user = payload.get("user") or payload.get("safety_identifier")
    if user:
        body["metadata"] = {"user_id": user}
    if payload.get("tools"):
        body["tools"] = _anthropic_tools(as_array(payload["tools"], "tools"))
        choice = _anthropic_tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    if payload.get("stream") is True:
        body["stream"] = True
    return body


def _refuse_unsupported(payload: JsonObject) -> None:
    for name in payload:
        if name not in _HANDLED_FIELDS and name not in _DROPPED_FIELDS:
            raise UnsupportedFeatureError(name, f"`{name}` is not supported by Anthropic deployments")
    if (payload.get("n") or 1) > 1:
        raise UnsupportedFeatureError("n", "Anthropic deployments answer one choice")
    if payload.get("logprobs") or payload.get("top_logprobs"):
        raise UnsupportedFeatureError("logprobs", "Anthropic deployments report no logprobs")
    response_format = payload.get("response_format")
    if response_format is not None and as_object(response_format, "response_format").get("type") != "text":
        raise UnsupportedFeatureError("response_format", "JSON response formats are not supported by Anthropic")


def _turns(messages: list[Any]) -> tuple[list[JsonObject], list[JsonObject]]:
    """The system blocks and the alternating user/assistant turns of a chat conversation."""
    system: list[JsonObject] = []
    turns: list[JsonObject] = []
    for i, item in enumerate(messages):
        param = f"messages[{i}]"
        message = as_object(item, param)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), f"{param}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{param}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, param)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, param)]
        else:
            raise UnsupportedFeatureError(f"{param}.role", f"`{role}` messages are not supported by Anthropic")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _text_blocks(content: Any, param: str) -> list[JsonObject]:
    blocks: list[JsonObject] = []
    for j, part in enumerate(_parts(content, param)):
        if part.get("type") not in ("text", "refusal"):
            raise UnsupportedFeatureError(f"{param}[{j}].type", "only text parts are supported here")
        text = part.get("text") if part["type"] == "text" else part.get("refusal")
        if as_string(text, f"{param}[{j}]"):
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: Any, param: str) -> list[JsonObject]:
    blocks: list[JsonObject] = []
    for j, part in enumerate(_parts(content, param)):
        kind = part.get("type")
        if kind == "text":
            blocks.extend(_text_blocks([part], f"{param}[{j}]"))
        elif kind == "image_url":
            blocks.append(_image_block(part, f"{param}[{j}]"))
        else:
            raise UnsupportedFeatureError(f"{param}[{j}].type", f"`{kind}` parts are not supported by Anthropic")
    return blocks


def _image_block(part: JsonObject, param: str) -> JsonObject:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    url = as_string(url, f"{param}.image_url.url")
    header, comma, data = url.partition(",")
    if url.startswith("data:") and comma and header.endswith(";base64"):
        media_type = header.removeprefix("data:").removesuffix(";base64")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: JsonObject, param: str) -> list[JsonObject]:
    blocks = _text_blocks(message.get("content"), f"{param}.content")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls") or []
    for j, item in enumerate(as_array(calls, f"{param}.tool_calls")):
        call = as_object(item, f"{param}.tool_calls[{j}]")
        function = as_object(call.get("function"), f"{param}.tool_calls[{j}].function")
        name = as_string(function.get("name"), f"{param}.tool_calls[{j}].function.name")
        call_id = tool_use_id(call.get("id"), f"{param}_{j}")
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": tool_input(function.get("arguments"))})
    return blocks


def _tool_result(message: JsonObject, param: str) -> JsonObject:
    call_id = as_string(message.get("tool_call_id"), f"{param}.tool_call_id")
    block: JsonObject = {"type": "tool_result", "tool_use_id": tool_use_id(call_id, call_id)}
    content = _text_blocks(message.get("content"), f"{param}.content")
    if content:
        block["content"] = content
    return block


def _anthropic_tools(tools: list[Any]) -> list[JsonObject]:
    anthropic: list[JsonObject] = []
    for i, item in enumerate(tools):
        tool = as_object(item, f"tools[{i}]")
        if tool.get("type") != "function":
            raise UnsupportedFeatureError(f"tools[{i}].type", "only function tools are supported by Anthropic")
        function = as_object(tool.get("function"), f"tools[{i}].function")
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        converted: JsonObject = {"name": as_string(function.get("name"), f"tools[{i}].function.name")}
        if function.get("description"):
            converted["description"] = function["description"]
        converted["input_schema"] = schema
        anthropic.append(converted)
    return anthropic


def _anthropic_tool_choice(choice: Any, parallel_tool_calls: Any) -> JsonObject | None:
    converted: JsonObject | None
    if choice is None or choice == "auto":
        converted = {"type": "auto"} if parallel_tool_calls is False else None
    elif choice == "required":
        converted = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}  # takes no `disable_parallel_tool_use`
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = as_object(choice.get("function"), "tool_choice.function")
        converted = {"type": "tool", "name": as_string(function.get("name"), "tool_choice.function.name")}
    else:
        raise UnsupportedFeatureError("tool_choice", "only `auto`, `required`, `none` or a named function")
    if converted is not None and parallel_tool_calls is False:
        converted["disable_parallel_tool_use"] = True
    return converted


# --- answer: Messages → chat -------------------------------------------------------------------------


def to_chat_completion(message: JsonObject, *, model: str, created: int) -> JsonObject:
    """The `chat.completion` for an Anthropic `message` (see the module docstring)."""
    texts: list[str] = []
    calls: list[JsonObject] = []
    blocks = message.get("content")
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(_tool_call(block, len(calls)))
    text = "".join(texts)
    answer: JsonObject = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        answer["tool_calls"] = calls
    choice = {"index": 0, "message": answer, "logprobs": None, "finish_reason": _finish_reason(message)}
    return {
        "id": _string_or(message.get("id"), "msg"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _chat_usage(_usage(message.get("usage"))),
    }


def _tool_call(block: JsonObject, index: int) -> JsonObject:
    arguments = block.get("input")
    function = {
        "name": _string_or(block.get("name"), ""),
        "arguments": _encoder.encode(arguments if arguments is not None else {}).decode(),
    }
    return {"id": _string_or(block.get("id"), f"toolu_{index}"), "type": "function", "function": function}


def _finish_reason(message: JsonObject) -> str:
    reason = message.get("stop_reason")
    return _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _usage(value: Any) -> _AnthropicUsage:
    try:
        return msgspec.convert(value, _AnthropicUsage) if isinstance(value, dict) else _AnthropicUsage()
    except msgspec.ValidationError:
        return _AnthropicUsage()


def _chat_usage(usage: _AnthropicUsage) -> JsonObject:
    cache_read = usage.cache_read_input_tokens or 0
    prompt = usage.input_tokens + cache_read + (usage.cache_creation_input_tokens or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    }


# --- stream: Anthropic SSE → chat chunks -------------------------------------------------------------


class ChunksFromEvents:
    """`chat.completion.chunk` objects for an Anthropic stream: `feed` each event's decoded `data`.

    Anthropic names each event after its data's `type`, so the data alone suffices. The chunks follow chat's
    order: the role first, content and tool-call deltas, then at `message_stop` the finish chunk and a final
    `choices: []` usage chunk, after which `done` is true. An `error` event raises `AnthropicStreamError`.
    """

    def __init__(self, *, model: str, created: int) -> None:
        self._model = model
        self._created = created
        self._id = ""
        self._usage = _AnthropicUsage()
        self._stop_reason: str | None = None
        self._tools: dict[int, int] = {}
        """Anthropic block index → chat tool-call index."""
        self._without_arguments: set[int] = set()
        self.done = False

    def feed(self, event: JsonObject) -> list[JsonObject]:
        kind = event.get("type")
        if kind == "message_start":
            return self._message_start(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "content_block_stop":
            return self._block_stop(event)
        if kind == "message_delta":
            self._message_delta(event)
            return []
        if kind == "message_stop":
            self.done = True
            return [
                self._chunk({}, finish_reason=_FINISH_REASONS.get(self._stop_reason or "", "stop")),
                self._usage_chunk(),
            ]
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            raise AnthropicStreamError(_string_or(error.get("type"), "api_error"), _string_or(error.get("message"), ""))
        return []  # `ping`, and event types added later (Anthropic asks clients to ignore unknown ones)

    def _message_start(self, event: JsonObject) -> list[JsonObject]:
        message = event.get("message")
        message = message if isinstance(message, dict) else {}
        self._id = _string_or(message.get("id"), self._id)
        self._model = _string_or(message.get("model"), self._model)
        self._usage = _usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, event: JsonObject) -> list[JsonObject]:
        block = event.get("content_block")
        block = block if isinstance(block, dict) else {}
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        tool_index = self._tools[_index(event)] = len(self._tools)
        initial = block.get("input")
        arguments = _encoder.encode(initial).decode() if initial else ""
        if not arguments:
            self._without_arguments.add(tool_index)
        function = {"name": _string_or(block.get("name"), ""), "arguments": arguments}
        call = {"index": tool_index, "id": _string_or(block.get("id"), ""), "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, event: JsonObject) -> list[JsonObject]:
        delta = event.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        tool_index = self._tools.get(_index(event))
        if delta.get("type") == "input_json_delta" and tool_index is not None and delta.get("partial_json"):
            self._without_arguments.discard(tool_index)
            return [self._arguments_chunk(tool_index, delta["partial_json"])]
        return []  # thinking, signature and citation deltas have no chat counterpart

    def _block_stop(self, event: JsonObject) -> list[JsonObject]:
        tool_index = self._tools.get(_index(event))
        if tool_index is None or tool_index not in self._without_arguments:
            return []
        # Chat clients parse `arguments` as JSON: a call without input still needs `{}`.
        self._without_arguments.discard(tool_index)
        return [self._arguments_chunk(tool_index, "{}")]

    def _message_delta(self, event: JsonObject) -> None:
        delta = event.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self._stop_reason = delta["stop_reason"]
        usage = event.get("usage")
        if not isinstance(usage, dict):
            return
        # Counts in `message_delta` are cumulative and optional: present ones replace those of `message_start`.
        update = _usage({**msgspec.structs.asdict(self._usage), **{k: v for k, v in usage.items() if v is not None}})
        self._usage = update

    def _arguments_chunk(self, tool_index: int, arguments: str) -> JsonObject:
        return self._chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": arguments}}]})

    def _chunk(self, delta: JsonObject, *, finish_reason: str | None = None) -> JsonObject:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head(), "choices": [choice], "usage": None}

    def _usage_chunk(self) -> JsonObject:
        return {**self._head(), "choices": [], "usage": _chat_usage(self._usage)}

    def _head(self) -> JsonObject:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}


def _index(event: JsonObject) -> int:
    index = event.get("index")
    return index if isinstance(index, int) else -1


# --- value checks ------------------------------------------------------------------------------------


def _parts(content: Any, param: str) -> list[JsonObject]:
    """Chat content as parts (a string is one text part; `None` none)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = as_array(content, param)
    for j, part in enumerate(parts):
        as_object(part, f"{param}[{j}]")
    return parts


def _string_or(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default
