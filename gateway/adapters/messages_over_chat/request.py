"""Messages → chat: a `/v1/messages` body as the chat-completions request asking the same.

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
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gateway.adapters.messages_over_chat.checks import (
    TranslationError,
    UnsupportedFeatureError,
    as_array,
    as_number,
    as_object,
    as_string,
)
from gateway.schema.openai import JsonObject

_KNOWN_FIELDS: Final = frozenset({
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "metadata", "stream",
    "tools", "tool_choice", "thinking",
})  # fmt: skip
_DROPPED_FIELDS: Final = frozenset({"cache_control", "top_k", "service_tier", "speed", "diagnostics"})
_MAX_STOP_SEQUENCES: Final = 4  # chat's limit (`CreateChatCompletionRequest.stop`)
_encoder = msgspec.json.Encoder()


def to_chat(body: JsonObject) -> JsonObject:
    """A chat-completions request asking what the Messages request `body` asks (see the module docstring)."""
    _refuse_unknown_fields(body)
    _refuse_thinking(body.get("thinking"))
    messages = as_array(body.get("messages"), "messages")
    chat: JsonObject = {
        "model": as_string(body.get("model"), "model"),
        "messages": [*_system_messages(body.get("system")), *_chat_messages(messages)],
        "max_completion_tokens": _max_tokens(body.get("max_tokens")),
    }
    if body.get("stop_sequences"):
        chat["stop"] = _stop_sequences(body["stop_sequences"])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = as_number(body[name], name)
    user = as_object(body.get("metadata") or {}, "metadata").get("user_id")
    if user is not None:
        chat["user"] = as_string(user, "metadata.user_id")
    if body.get("tools"):
        chat["tools"] = _chat_tools(as_array(body["tools"], "tools"))
    if body.get("tool_choice") is not None:
        chat.update(_chat_tool_choice(as_object(body["tool_choice"], "tool_choice"), has_tools="tools" in chat))
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
    kind = as_object(thinking, "thinking").get("type")
    if kind != "disabled":
        raise UnsupportedFeatureError("thinking", f"extended thinking (`{kind}`) is not supported by this gateway")


def _max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TranslationError("max_tokens", "must be an integer of at least 1")
    return value


def _stop_sequences(value: Any) -> list[str]:
    sequences = [as_string(item, f"stop_sequences[{i}]") for i, item in enumerate(as_array(value, "stop_sequences"))]
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
        message = as_object(item, param)
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
    tool_call_id = as_string(block.get("tool_use_id"), f"{param}.tool_use_id")
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
    arguments = as_object(block.get("input", {}), f"{param}.input")
    function = {"name": as_string(block.get("name"), f"{param}.name"), "arguments": _encoder.encode(arguments).decode()}
    return {"id": as_string(block.get("id"), f"{param}.id"), "type": "function", "function": function}


def _text_part(block: JsonObject, param: str) -> JsonObject:
    if block["type"] != "text":
        raise TranslationError(f"{param}.type", "must be `text`")
    return {"type": "text", "text": as_string(block.get("text"), f"{param}.text")}


def _image_part(block: JsonObject, param: str) -> JsonObject:
    source = as_object(block.get("source"), f"{param}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = as_string(source.get("media_type"), f"{param}.source.media_type")
        url = f"data:{media_type};base64,{as_string(source.get('data'), f'{param}.source.data')}"
    elif kind == "url":
        url = as_string(source.get("url"), f"{param}.source.url")
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
        tool = as_object(item, param)
        kind = tool.get("type") or "custom"
        if kind != "custom":
            raise UnsupportedFeatureError(f"{param}.type", f"Anthropic-defined tool `{kind}` is not supported")
        function: JsonObject = {
            "name": as_string(tool.get("name"), f"{param}.name"),
            "parameters": as_object(tool.get("input_schema"), f"{param}.input_schema"),
        }
        if tool.get("description") is not None:
            function["description"] = as_string(tool["description"], f"{param}.description")
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
        name = as_string(choice.get("name"), "tool_choice.name")
        fields = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        raise TranslationError("tool_choice.type", "must be `auto`, `any`, `tool` or `none`")
    # Chat accepts `parallel_tool_calls` only alongside `tools`.
    if choice.get("disable_parallel_tool_use") is True and has_tools:
        fields["parallel_tool_calls"] = False
    return fields


def _blocks(content: Any, param: str) -> list[JsonObject]:
    """Content as blocks, each an object with a string `type` (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = as_array(content, param)
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise TranslationError(f"{param}[{i}]", "must be a content block object with a `type`")
    return blocks
