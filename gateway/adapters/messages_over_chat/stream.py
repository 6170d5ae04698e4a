"""Chat chunks → Anthropic SSE: the `message_start` … `message_stop` events of a streamed answer."""

from __future__ import annotations

import msgspec

from gateway.adapters.messages_over_chat.answer import (
    anthropic_stop_reason,
    anthropic_usage,
    first_choice,
    matched_stop,
    tool_use_id,
)
from gateway.schema.openai import JsonObject

_encoder = msgspec.json.Encoder()


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
        choice = first_choice(chunk.get("choices"))
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
            self._matched_stop = matched_stop(choice)
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
        stop_reason = anthropic_stop_reason(self._finish_reason, has_tool_use=has_tool_use, refused=self._refused)
        stop_sequence = self._matched_stop if stop_reason == "end_turn" else None
        delta = {"stop_reason": "stop_sequence" if stop_sequence is not None else stop_reason}
        usage = anthropic_usage(self._usage) if self._usage is not None else {"output_tokens": 0}
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
        usage = anthropic_usage(chunk.get("usage"))
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
