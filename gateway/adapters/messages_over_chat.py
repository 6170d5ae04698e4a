"""Anthropic's Messages API served by the chat-completions pipeline: a `/v1/messages` body in, its answer out.

`to_chat` turns a Messages request into a chat-completions request; `from_chat` turns the pipeline's
`chat.completion` into an Anthropic `message`; `MessagesStream` turns a chat stream's chunk payloads into
Anthropic SSE frames; `error_body` gives an HTTP error in Anthropic's shape.

Request fields:

- mapped: `model`; `system` (a string, or text blocks) → one system message; `messages` (string or blocks:
  `text`, `image` with a `base64` or `url` source → `image_url` parts, assistant `tool_use` → `tool_calls` with
  the JSON-encoded `input`, user `tool_result` → `tool` messages in their order, before the rest of the user
  turn); `max_tokens` → `max_completion_tokens`; `stop_sequences` → `stop`; `temperature`; `top_p`;
  `metadata.user_id` → `user`; `stream` → `stream` + `stream_options.include_usage`; `tools` (custom tools)
  → function tools (`strict` kept); `tool_choice` `auto`/`any`/`tool`/`none` → `auto`/`required`/named
  function/`none`, `disable_parallel_tool_use` → `parallel_tool_calls: false`.
  Content that is one text block becomes a string, anything else a list of parts. A `tool_result` marked
  `is_error` gets its text prefixed with `Error: ` (chat has no error flag). Images inside a `tool_result`
  (chat tool messages carry text only) open the user message that follows the tool messages.
- dropped, as they cannot change what the answer says: `cache_control` (top level and on blocks and tools),
  `citations` settings, `thinking`/`redacted_thinking` blocks of earlier assistant turns (Anthropic itself
  ignores them), `thinking: {"type": "disabled"}`, `top_k` (chat has no such sampling field), `service_tier`
  and `speed` (scheduling), `diagnostics` (cache-miss reporting).
- refused with `UnsupportedFeatureError`: `thinking` enabled or adaptive; server and Anthropic-defined tools
  (`type` other than `custom`); `document`, `search_result`, server-tool and container blocks; `file` image
  sources; a final assistant message (prefill: a chat upstream answers it instead of continuing it); more
  than 4 `stop_sequences`; every other top-level field (`container`, `mcp_servers`, `context_management`,
  `output_config`, `inference_geo`, …).

Malformed bodies raise `TranslationError`; both errors carry `param`, the JSON path of the offending field.

Answers: text → a `text` block; `refusal` → a `text` block with `stop_reason: "refusal"`; tool calls →
`tool_use` blocks whose `id` is the chat id made `toolu_`-prefixed and Anthropic-safe, and whose `input` is the
decoded arguments (`{}` for none; arguments that are not a JSON object are kept as `{"_raw": "<arguments>"}`
so nothing the model produced is lost). Stop reasons: `stop` → `end_turn` (`stop_sequence` when the upstream
names the matched string in vLLM's `stop_reason` extension, as chat has no field for it), `length` →
`max_tokens`, `tool_calls` → `tool_use` (also for upstreams that say `stop` with tool calls),
`content_filter` → `refusal`. Usage follows Anthropic's split: `input_tokens` = `prompt_tokens` −
`cached_tokens`, `cache_read_input_tokens` = `cached_tokens`, `cache_creation_input_tokens` = 0.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from gateway.schema.openai import JsonObject, Usage

_KNOWN_FIELDS: Final = frozenset({
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "metadata", "stream",
    "tools", "tool_choice", "thinking",
})  # fmt: skip
_DROPPED_FIELDS: Final = frozenset({"cache_control", "top_k", "service_tier", "speed", "diagnostics"})
_MAX_STOP_SEQUENCES: Final = 4  # chat's limit (`CreateChatCompletionRequest.stop`)
_STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_UNSAFE_ID_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
_encoder = msgspec.json.Encoder()


class TranslationError(ValueError):
    """A request that cannot be translated; `param` is the JSON path of the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"`{param}`: {message}")
        self.param = param
        self.message = message


class UnsupportedFeatureError(TranslationError):
    """A well-formed field whose feature the other API lacks (dropping it would change the answer)."""


# --- request: Messages → chat ----------------------------------------------------------------------


def to_chat(body: JsonObject) -> JsonObject:
    """A chat-completions request asking what the Messages request `body` asks (see the module docstring)."""
    _refuse_unknown_fields(body)
    _refuse_thinking(body.get("thinking"))
    messages = _array(body.get("messages"), "messages")
    chat: JsonObject = {
        "model": _string(body.get("model"), "model"),
        "messages": [*_system_messages(body.get("system")), *_chat_messages(messages)],
        "max_completion_tokens": _max_tokens(body.get("max_tokens")),
    }
    if body.get("stop_sequences"):
        chat["stop"] = _stop_sequences(body["stop_sequences"])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = _number(body[name], name)
    user = _object(body.get("metadata") or {}, "metadata").get("user_id")
    if user is not None:
        chat["user"] = _string(user, "metadata.user_id")
    if body.get("tools"):
        chat["tools"] = _chat_tools(_array(body["tools"], "tools"))
    if body.get("tool_choice") is not None:
        chat.update(_chat_tool_choice(_object(body["tool_choice"], "tool_choice"), has_tools="tools" in chat))
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _refuse_unknown_fields(body: JsonObject) -> None:
    for name in body:
        if name not in _KNOWN_FIELDS and name not in _DROPPED_FIELDS:
            raise UnsupportedFeatureError(name, f"`{name}` is not supported by this gateway")


def _refuse_thinking(thinking: Any) -> None:
    if thinking is None:
        return
    kind = _object(thinking, "thinking").get("type")
    if kind != "disabled":
        raise UnsupportedFeatureError("thinking", f"extended thinking (`{kind}`) is not supported by this gateway")


def _max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TranslationError("max_tokens", "must be an integer of at least 1")
    return value


def _stop_sequences(value: Any) -> list[str]:
    sequences = [_string(item, f"stop_sequences[{i}]") for i, item in enumerate(_array(value, "stop_sequences"))]
    if len(sequences) > _MAX_STOP_SEQUENCES:
        raise UnsupportedFeatureError("stop_sequences", f"at most {_MAX_STOP_SEQUENCES} stop sequences are supported")
    return sequences


def _system_messages(system: Any) -> list[JsonObject]:
    if system is None or system == "":
        return []
    parts = [_text_part(block, f"system[{i}]") for i, block in enumerate(_blocks(system, "system"))]
    return [{"role": "system", "content": _text_or_parts(parts)}] if parts else []


def _chat_messages(messages: list[Any]) -> list[JsonObject]:
    chat: list[JsonObject] = []
    for i, item in enumerate(messages):
        param = f"messages[{i}]"
        message = _object(item, param)
        role = message.get("role")
        blocks = _blocks(message.get("content"), f"{param}.content")
        if role == "user":
            chat.extend(_user_turn(blocks, f"{param}.content"))
        elif role == "assistant":
            if i == len(messages) - 1:
                raise UnsupportedFeatureError(param, "a final `assistant` message (prefill) is not supported")
            chat.extend(_assistant_turn(blocks, f"{param}.content"))
        else:
            raise TranslationError(f"{param}.role", "must be `user` or `assistant`")
    return chat


def _user_turn(blocks: list[JsonObject], param: str) -> list[JsonObject]:
    """Tool results first, in order, as chat requires them right after the assistant's tool calls."""
    messages: list[JsonObject] = []
    tool_images: list[JsonObject] = []
    parts: list[JsonObject] = []
    for j, block in enumerate(blocks):
        path = f"{param}[{j}]"
        kind = block["type"]
        if kind == "tool_result":
            tool_message, images = _tool_message(block, path)
            messages.append(tool_message)
            tool_images.extend(images)
        elif kind == "text":
            parts.append(_text_part(block, path))
        elif kind == "image":
            parts.append(_image_part(block, path))
        else:
            raise _unsupported_block(kind, f"{path}.type")
    parts = tool_images + parts
    if parts:
        messages.append({"role": "user", "content": _text_or_parts(parts)})
    return messages


def _tool_message(block: JsonObject, param: str) -> tuple[JsonObject, list[JsonObject]]:
    """The `tool` message for a `tool_result`, and the images it carried (a tool message holds text only)."""
    texts: list[str] = []
    images: list[JsonObject] = []
    for k, item in enumerate(_blocks(block.get("content") or [], f"{param}.content")):
        path = f"{param}.content[{k}]"
        if item["type"] == "text":
            texts.append(_text_part(item, path)["text"])
        elif item["type"] == "image":
            images.append(_image_part(item, path))
        else:
            raise _unsupported_block(item["type"], f"{path}.type")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    tool_call_id = _string(block.get("tool_use_id"), f"{param}.tool_use_id")
    return {"role": "tool", "tool_call_id": tool_call_id, "content": text}, images


def _assistant_turn(blocks: list[JsonObject], param: str) -> list[JsonObject]:
    parts: list[JsonObject] = []
    calls: list[JsonObject] = []
    for j, block in enumerate(blocks):
        path = f"{param}[{j}]"
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, path))
        elif kind == "tool_use":
            calls.append(_tool_call(block, path))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported_block(kind, f"{path}.type")
    if not parts and not calls:
        return []
    message: JsonObject = {"role": "assistant", "content": _text_or_parts(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: JsonObject, param: str) -> JsonObject:
    arguments = _object(block.get("input", {}), f"{param}.input")
    function = {"name": _string(block.get("name"), f"{param}.name"), "arguments": _encoder.encode(arguments).decode()}
    return {"id": _string(block.get("id"), f"{param}.id"), "type": "function", "function": function}


def _text_part(block: JsonObject, param: str) -> JsonObject:
    if block["type"] != "text":
        raise TranslationError(f"{param}.type", "must be `text`")
    return {"type": "text", "text": _string(block.get("text"), f"{param}.text")}


def _image_part(block: JsonObject, param: str) -> JsonObject:
    source = _object(block.get("source"), f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{param}.source.media_type")
        url = f"data:{media_type};base64,{_string(source.get('data'), f'{param}.source.data')}"
    elif kind == "url":
        url = _string(source.get("url"), f"{param}.source.url")
    else:
        raise UnsupportedFeatureError(f"{param}.source.type", f"image source `{kind}` is not supported")
    return {"type": "image_url", "image_url": {"url": url}}


def _text_or_parts(parts: list[JsonObject]) -> str | list[JsonObject]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _unsupported_block(kind: str, param: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(param, f"`{kind}` content blocks are not supported here")


def _chat_tools(tools: list[Any]) -> list[JsonObject]:
    chat: list[JsonObject] = []
    for i, item in enumerate(tools):
        param = f"tools[{i}]"
        tool = _object(item, param)
        kind = tool.get("type") or "custom"
        if kind != "custom":
            raise UnsupportedFeatureError(f"{param}.type", f"Anthropic-defined tool `{kind}` is not supported")
        function: JsonObject = {
            "name": _string(tool.get("name"), f"{param}.name"),
            "parameters": _object(tool.get("input_schema"), f"{param}.input_schema"),
        }
        if tool.get("description") is not None:
            function["description"] = _string(tool["description"], f"{param}.description")
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        chat.append({"type": "function", "function": function})
    return chat


def _chat_tool_choice(choice: JsonObject, *, has_tools: bool) -> JsonObject:
    kind = choice.get("type")
    fields: JsonObject
    if kind == "auto":
        fields = {"tool_choice": "auto"}
    elif kind == "any":
        fields = {"tool_choice": "required"}
    elif kind == "none":
        fields = {"tool_choice": "none"}
    elif kind == "tool":
        name = _string(choice.get("name"), "tool_choice.name")
        fields = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        raise TranslationError("tool_choice.type", "must be `auto`, `any`, `tool` or `none`")
    # Chat accepts `parallel_tool_calls` only alongside `tools`.
    if choice.get("disable_parallel_tool_use") is True and has_tools:
        fields["parallel_tool_calls"] = False
    return fields


# --- answer: chat → Messages ------------------------------------------------------------------------


def from_chat(completion: JsonObject, *, model: str, message_id: str) -> JsonObject:
    """The Anthropic `message` for a `chat.completion` (first choice; see the module docstring)."""
    choice = _first_choice(completion.get("choices"))
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[JsonObject] = []
    text = _chat_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    for index, call in enumerate(calls if isinstance(calls, list) else ()):
        if isinstance(call, dict):
            content.append(_tool_use_block(call, message_id, index))
    has_tool_use = any(block["type"] == "tool_use" for block in content)
    stop_reason = _stop_reason(choice.get("finish_reason"), has_tool_use=has_tool_use, refused=bool(refusal))
    stop_sequence = _matched_stop(choice) if stop_reason == "end_turn" else None
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "stop_sequence" if stop_sequence is not None else stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _anthropic_usage(completion.get("usage")),
    }


def _first_choice(choices: Any) -> JsonObject:
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first: JsonObject = choices[0]
        return first
    return {}


def _chat_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some upstreams answer in text parts
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _tool_use_block(call: JsonObject, message_id: str, index: int) -> JsonObject:
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    return {
        "type": "tool_use",
        "id": tool_use_id(call.get("id"), f"{message_id}_{index}"),
        "name": name if isinstance(name, str) else "",
        "input": tool_input(function.get("arguments")),
    }


def tool_use_id(chat_id: Any, fallback: str) -> str:
    """An Anthropic tool-use id (`toolu_…`, letters, digits, `_` and `-`) for a chat tool-call id.

    `fallback` stands in for a missing id; the same chat id always gives the same tool-use id.
    """
    raw = chat_id if isinstance(chat_id, str) and chat_id else fallback
    safe = _UNSAFE_ID_CHARS.sub("_", raw)
    return safe if safe.startswith("toolu_") else f"toolu_{safe}"


def tool_input(arguments: Any) -> JsonObject:
    """Tool-call arguments as an input object; anything but a JSON object is kept as `{"_raw": …}`."""
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        arguments = _encoder.encode(arguments).decode()
    try:
        decoded = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {"_raw": arguments}
    return decoded if isinstance(decoded, dict) else {"_raw": arguments}


def _stop_reason(finish_reason: Any, *, has_tool_use: bool, refused: bool) -> str:
    reason = _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    if reason == "end_turn" and has_tool_use:
        return "tool_use"
    if reason == "end_turn" and refused:
        return "refusal"
    return reason


def _matched_stop(choice: JsonObject) -> str | None:
    """The stop sequence that ended the answer, where the upstream says (vLLM's `stop_reason`: str or token id)."""
    matched = choice.get("stop_reason")
    return matched if isinstance(matched, str) else None


def _anthropic_usage(usage: Any) -> JsonObject:
    try:
        counts = msgspec.convert(usage, Usage) if isinstance(usage, dict) else Usage()
    except msgspec.ValidationError:
        counts = Usage()
    cached = (counts.prompt_tokens_details.cached_tokens or 0) if counts.prompt_tokens_details else 0
    return {
        "input_tokens": max(counts.prompt_tokens - cached, 0),
        "output_tokens": counts.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


# --- stream: chat chunks → Anthropic SSE ------------------------------------------------------------


class _ToolBlock:
    """One streamed tool call; its block opens once its name is known (arguments wait until then)."""

    __slots__ = ("arguments", "block", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments = ""
        self.block: int | None = None


class MessagesStream:
    """Anthropic SSE frames for one chat stream: `feed` each chunk payload, then `finish` (or `fail`).

    `message_start` is sent at the first chunk (usage arrives last in chat, so its `input_tokens` is 0 unless
    that chunk carries usage); the final usage goes in `message_delta`. Only the first choice is read.
    """

    def __init__(self, model: str, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self._started = False
        self._closed = False
        self._blocks = 0
        self._open: int | None = None
        self._open_is_text = False
        self._tools: dict[int, _ToolBlock] = {}
        self._finish_reason: str | None = None
        self._matched_stop: str | None = None
        self._refused = False
        self._usage: JsonObject | None = None

    def feed(self, chunk: JsonObject) -> list[bytes]:
        if self._closed:
            return []
        frames = self._start(chunk)
        choice = _first_choice(chunk.get("choices"))
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._refused = self._refused or key == "refusal"
                frames += self._text(text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                frames += self._tool_call(call)
        if isinstance(choice.get("finish_reason"), str):
            self._finish_reason = choice["finish_reason"]
            self._matched_stop = _matched_stop(choice)
            frames += self._open_unnamed_tools() + self._close_block()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        return frames

    def finish(self) -> list[bytes]:
        """The closing frames, after the chat stream's normal end."""
        if self._closed:
            return []
        frames = self._start({}) + self._open_unnamed_tools() + self._close_block()
        self._closed = True
        has_tool_use = bool(self._tools)
        stop_reason = _stop_reason(self._finish_reason, has_tool_use=has_tool_use, refused=self._refused)
        stop_sequence = self._matched_stop if stop_reason == "end_turn" else None
        delta = {"stop_reason": "stop_sequence" if stop_sequence is not None else stop_reason}
        usage = _anthropic_usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        frames.append(_frame("message_delta", {**delta, "stop_sequence": stop_sequence}, usage=usage))
        frames.append(_frame("message_stop"))
        return frames

    def fail(self, error_type: str, message: str) -> list[bytes]:
        """A terminal `error` event (`overloaded_error`, `api_error`, …) for a stream that broke."""
        if self._closed:
            return []
        self._closed = True
        return [_sse("error", {"type": "error", "error": {"type": error_type, "message": message}})]

    def _start(self, chunk: JsonObject) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        usage = _anthropic_usage(chunk.get("usage"))
        usage["output_tokens"] = 0
        message: JsonObject = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [_sse("message_start", {"type": "message_start", "message": message})]

    def _text(self, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if self._open is None or not self._open_is_text:
            frames += self._close_block() + self._open_block({"type": "text", "text": ""}, is_text=True)
        frames.append(_delta(self._current(), {"type": "text_delta", "text": text}))
        return frames

    def _tool_call(self, call: JsonObject) -> list[bytes]:
        tool = self._tools.setdefault(self._tool_index(call), _ToolBlock())
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        if tool.block is not None:
            # Deltas go to the call's own block: an upstream may interleave parallel calls.
            return [_delta(tool.block, {"type": "input_json_delta", "partial_json": arguments})] if arguments else []
        if isinstance(call.get("id"), str):
            tool.id = tool.id or call["id"]
        if isinstance(function.get("name"), str) and function["name"]:
            tool.name = function["name"]
        tool.arguments += arguments
        return self._open_tool(tool) if tool.name else []

    def _tool_index(self, call: JsonObject) -> int:
        index = call.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        # Upstreams without `index` send each call whole: a new id is a new call.
        return len(self._tools) if call.get("id") or not self._tools else max(self._tools)

    def _open_tool(self, tool: _ToolBlock) -> list[bytes]:
        block_id = tool_use_id(tool.id, f"{self._message_id}_{self._blocks}")
        content_block = {"type": "tool_use", "id": block_id, "name": tool.name or "", "input": {}}
        frames = self._close_block() + self._open_block(content_block, is_text=False)
        tool.block = self._current()
        if tool.arguments:
            frames.append(_delta(tool.block, {"type": "input_json_delta", "partial_json": tool.arguments}))
        return frames

    def _open_unnamed_tools(self) -> list[bytes]:
        """Calls whose name never came are still the model's output: shown under an empty name."""
        frames: list[bytes] = []
        for tool in self._tools.values():
            if tool.block is None:
                frames += self._open_tool(tool)
        return frames

    def _open_block(self, content_block: JsonObject, *, is_text: bool) -> list[bytes]:
        self._open = self._blocks
        self._open_is_text = is_text
        self._blocks += 1
        return [
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": self._open, "content_block": content_block},
            )
        ]

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [_sse("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _current(self) -> int:
        assert self._open is not None
        return self._open


def _delta(index: int, delta: JsonObject) -> bytes:
    return _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _frame(name: str, delta: JsonObject | None = None, *, usage: JsonObject | None = None) -> bytes:
    data: JsonObject = {"type": name}
    if delta is not None:
        data["delta"] = delta
    if usage is not None:
        data["usage"] = usage
    return _sse(name, data)


def _sse(name: str, data: JsonObject) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


# --- errors -----------------------------------------------------------------------------------------


def error_body(status: int, message: str) -> JsonObject:
    """Anthropic's error shape for an HTTP status: 503 (load shed, queue full) is `overloaded_error`, Anthropic's
    529, so clients back off as they would from Anthropic; 502 is `api_error`; 504 is `timeout_error`."""
    error_type = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


# --- value checks -----------------------------------------------------------------------------------


def _blocks(content: Any, param: str) -> list[JsonObject]:
    """Content as blocks, each an object with a string `type` (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = _array(content, param)
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise TranslationError(f"{param}[{i}]", "must be a content block object with a `type`")
    return blocks


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranslationError(param, "must be an array")
    return value


def _object(value: Any, param: str) -> JsonObject:
    if not isinstance(value, dict):
        raise TranslationError(param, "must be an object")
    return value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise TranslationError(param, "must be a string")
    return value


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslationError(param, "must be a number")
    return value
