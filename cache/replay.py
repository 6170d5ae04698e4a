"""Answers across the stream boundary: a stored `chat.completion` replayed as SSE `chat.completion.chunk`s for a
streaming hit, and a streamed answer's chunks assembled into one `chat.completion` so a streamed miss can be stored.

Frames follow ECOSYSTEM §1.3: per choice a role delta first, then content (or refusal) pieces, one opening delta
per tool call (`index`, `id`, `type`, `function.name`, empty `arguments`) followed by its argument pieces, any
other message field whole, and a delta-less chunk with the `finish_reason`; then, when the client asked for
`stream_options.include_usage`, a `choices: []` chunk with the usage (every other chunk then has `usage: null`),
and `data: [DONE]`. A choice's `logprobs` ride whole on the chunk after its role delta (the openai SDK's accumulator
counts logprobs on the first chunk of a second choice twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from cache.errors import IncompleteStreamError

DONE = b"data: [DONE]\n\n"
PIECE_CHARS = 64
"""Characters per content / argument delta: many small frames look like a live stream to UIs, cheaply."""

_MESSAGE_STREAMED = frozenset({"role", "content", "refusal", "tool_calls"})

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def replay_sse(body: bytes, *, include_usage: bool, piece_chars: int = PIECE_CHARS) -> list[bytes]:
    """The SSE frames (`data: …\\n\\n`, ending with `data: [DONE]`) of a stored non-streaming completion `body`."""
    completion = _decoder.decode(body)
    head: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for name in ("service_tier", "system_fingerprint"):  # omitted, never null: the spec's string is not nullable
        if completion.get(name) is not None:
            head[name] = completion[name]

    def frame(choices: list[Any], usage: Any = None) -> bytes:
        chunk = {**head, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + _encoder.encode(chunk) + b"\n\n"

    frames: list[bytes] = []
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        logprobs = choice.get("logprobs")
        deltas = list(_deltas(choice.get("message") or {}, piece_chars))
        for position, delta in enumerate(deltas):
            carried = logprobs if position == 1 else None
            frames.append(frame([{"index": index, "delta": delta, "logprobs": carried, "finish_reason": None}]))
        finish = choice.get("finish_reason") or "stop"
        carried = logprobs if len(deltas) == 1 else None
        frames.append(frame([{"index": index, "delta": {}, "logprobs": carried, "finish_reason": finish}]))
    if include_usage and completion.get("usage") is not None:
        frames.append(frame([], completion["usage"]))
    frames.append(DONE)
    return frames


def _deltas(message: Mapping[str, Any], piece_chars: int) -> Iterator[dict[str, Any]]:
    content = message.get("content")
    first: dict[str, Any] = {"role": message.get("role") or "assistant", "content": "" if content is not None else None}
    if "refusal" in message and message["refusal"] is None:
        first["refusal"] = None
    yield first
    if isinstance(content, str):
        yield from ({"content": piece} for piece in _pieces(content, piece_chars))
    elif content is not None:  # not text (e.g. a list of parts): whole, replacing the empty start
        yield {"content": content}
    if isinstance(message.get("refusal"), str):
        yield from ({"refusal": piece} for piece in _pieces(message["refusal"], piece_chars))
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function")
        if not isinstance(function, Mapping):  # a custom tool call: whole, there is no fragment format to follow
            yield {"tool_calls": [{"index": position, **call}]}
            continue
        opening = {"name": function.get("name"), "arguments": ""}
        yield {"tool_calls": [{"index": position, "id": call.get("id"), "type": call.get("type"), "function": opening}]}
        for piece in _pieces(function.get("arguments") or "", piece_chars):
            yield {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}
    for name, value in message.items():
        if name not in _MESSAGE_STREAMED and value is not None:
            yield {name: value}


def _pieces(text: str, size: int) -> Iterator[str]:
    return (text[start : start + size] for start in range(0, len(text), size))


class _Choice:
    __slots__ = ("finish_reason", "logprobs", "message", "tool_calls")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {"role": "assistant", "content": None}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: Mapping[str, Any]) -> None:
        for name, value in (choice.get("delta") or {}).items():
            self._add_field(name, value)
        if choice.get("logprobs") is not None:
            self._add_logprobs(choice["logprobs"])
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def _add_field(self, name: str, value: Any) -> None:
        if name == "role":
            if value:
                self.message["role"] = value
        elif name == "tool_calls":
            for fragment in value or []:
                self._add_tool_call(fragment)
        elif name == "function_call" and isinstance(value, Mapping):  # deprecated, streamed like a tool call
            function = self.message.get(name)
            if not isinstance(function, dict):
                function = self.message[name] = {"name": None, "arguments": ""}
            _add_function(function, value)
        elif isinstance(value, str) and isinstance(self.message.get(name), str):
            self.message[name] += value  # content, refusal, and providers' extra text (`reasoning_content`)
        elif value is not None or name not in self.message:
            self.message[name] = value

    def _add_logprobs(self, logprobs: Mapping[str, Any]) -> None:
        merged = self.logprobs if self.logprobs is not None else {}
        for name, value in logprobs.items():
            if isinstance(value, list) and isinstance(merged.get(name), list):
                merged[name] = [*merged[name], *value]
            elif value is not None or name not in merged:
                merged[name] = value
        self.logprobs = merged

    def _add_tool_call(self, fragment: Mapping[str, Any]) -> None:
        position = fragment.get("index", len(self.tool_calls))
        call = self.tool_calls.setdefault(position, {})
        for name, value in fragment.items():
            if name == "index" or value is None:
                continue
            if name == "function" and isinstance(value, Mapping):
                _add_function(call.setdefault("function", {"name": None, "arguments": ""}), value)
            else:
                call.setdefault(name, value)

    def completed(self, index: int) -> dict[str, Any]:
        if self.finish_reason is None:
            raise IncompleteStreamError(f"choice {index} of the stream has no `finish_reason`")
        message = dict(self.message)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[position] for position in sorted(self.tool_calls)]
        return {"index": index, "message": message, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


def _add_function(function: dict[str, Any], fragment: Mapping[str, Any]) -> None:
    """The name comes whole (some providers repeat it in every fragment); the arguments come in pieces."""
    if fragment.get("name") and not function["name"]:
        function["name"] = fragment["name"]
    function["arguments"] += fragment.get("arguments") or ""


def assemble(chunks: Iterable[bytes | Mapping[str, Any]]) -> bytes:
    """The `chat.completion` body a streamed answer amounts to, from its chunks: SSE frames (`data: …`), their
    JSON payloads, or decoded payloads; `[DONE]` may be left in or out.

    Raises `IncompleteStreamError` for an error event, no chunks, or a choice that never finished: a stream
    that broke must not be cached as if it were an answer.
    """
    head: dict[str, Any] | None = None
    extras: dict[str, Any] = {}
    usage: Any = None
    choices: dict[int, _Choice] = {}
    for chunk in _payloads(chunks):
        if head is None:
            head = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model")}
        for name in ("service_tier", "system_fingerprint"):
            if chunk.get(name) is not None:
                extras[name] = chunk[name]
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            choices.setdefault(choice.get("index", 0), _Choice()).add(choice)
    if head is None or not choices:
        raise IncompleteStreamError("the stream had no choices")
    completion: dict[str, Any] = {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [choices[index].completed(index) for index in sorted(choices)],
    }
    if usage is not None:
        completion["usage"] = usage
    completion.update(extras)
    return _encoder.encode(completion)


def _payloads(chunks: Iterable[bytes | Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for raw in chunks:
        if isinstance(raw, bytes | bytearray):
            data = raw.strip().removeprefix(b"data:").strip()
            if data == b"[DONE]":
                continue
            chunk = _decoder.decode(data)
        else:
            chunk = raw
        if not isinstance(chunk, Mapping) or "error" in chunk:
            raise IncompleteStreamError("the stream carried an error event")
        yield chunk
