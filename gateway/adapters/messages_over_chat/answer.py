"""Chat → Messages: a `chat.completion` as an Anthropic `message`, and an HTTP error in Anthropic's shape.

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


def from_chat(completion: JsonObject, *, model: str, message_id: str) -> JsonObject:
    """The Anthropic `message` for a `chat.completion` (first choice; see the module docstring)."""
    choice = first_choice(completion.get("choices"))
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
    stop_reason = anthropic_stop_reason(choice.get("finish_reason"), has_tool_use=has_tool_use, refused=bool(refusal))
    stop_sequence = matched_stop(choice) if stop_reason == "end_turn" else None
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "stop_sequence" if stop_sequence is not None else stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(completion.get("usage")),
    }


def first_choice(choices: Any) -> JsonObject:
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


def anthropic_stop_reason(finish_reason: Any, *, has_tool_use: bool, refused: bool) -> str:
    reason = _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    if reason == "end_turn" and has_tool_use:
        return "tool_use"
    if reason == "end_turn" and refused:
        return "refusal"
    return reason


def matched_stop(choice: JsonObject) -> str | None:
    """The stop sequence that ended the answer, where the upstream says (vLLM's `stop_reason`: str or token id)."""
    matched = choice.get("stop_reason")
    return matched if isinstance(matched, str) else None


def anthropic_usage(usage: Any) -> JsonObject:
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


def error_body(status: int, message: str) -> JsonObject:
    """Anthropic's error shape for an HTTP status: 503 (load shed, queue full) is `overloaded_error`, Anthropic's
    529, so clients back off as they would from Anthropic; 502 is `api_error`; 504 is `timeout_error`."""
    error_type = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}
