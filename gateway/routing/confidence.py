"""A cascade's early-exit signal: how sure the small model's answer sounds, from the logprobs on the wire.

Confidence is the geometric mean of the answer's token probabilities, `exp(mean(logprob))`, in (0, 1]. For a
tool call only the tokens that spell the function's name count (the tool choice is the decision; its
arguments are mostly copied from the prompt); when the name is not found among the tokens, all of them count.
With several choices the least confident one speaks for the answer. An answer without logprobs has no
confidence (`None`): the cascade escalates it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import msgspec


class _TokenView(msgspec.Struct):
    token: str
    logprob: float


class _LogprobsView(msgspec.Struct):
    content: list[_TokenView] | None = None


class _FunctionView(msgspec.Struct):
    name: str | None = None


class _ToolCallView(msgspec.Struct):
    function: _FunctionView | None = None


class _MessageView(msgspec.Struct):
    tool_calls: list[_ToolCallView] | None = None


class _ChoiceView(msgspec.Struct):
    index: int = 0
    message: _MessageView | None = None
    delta: _MessageView | None = None
    logprobs: _LogprobsView | None = None


class _BodyView(msgspec.Struct):
    choices: list[_ChoiceView] | None = None


_decoder: Final = msgspec.json.Decoder(_BodyView)


def confidence(body: bytes) -> float | None:
    """Confidence of a `chat.completion` body; `None` when any choice came without logprobs."""
    choices = _decoder.decode(body).choices or []
    values: list[float] = []
    for choice in choices:
        tokens = choice.logprobs.content if choice.logprobs is not None else None
        if not tokens:
            return None
        calls = choice.message.tool_calls if choice.message is not None else None
        names = [call.function.name for call in calls or () if call.function is not None and call.function.name]
        values.append(token_confidence([t.token for t in tokens], [t.logprob for t in tokens], names))
    return min(values) if values else None


def token_confidence(tokens: Sequence[str], logprobs: Sequence[float], tool_names: Sequence[str] = ()) -> float:
    """`exp(mean(logprob))` over the tokens that spell a tool name, if any are given and found, else over all."""
    chosen = _tool_choice_positions(tokens, tool_names) if tool_names else []
    picked = [logprobs[i] for i in chosen] if chosen else list(logprobs)
    return math.exp(sum(picked) / len(picked))


def _tool_choice_positions(tokens: Sequence[str], names: Sequence[str]) -> list[int]:
    """Indices of the tokens overlapping the first occurrence of each name in the concatenated token text."""
    text = "".join(tokens)
    spans = [(start, start + len(name)) for name in names if (start := text.find(name)) >= 0]
    positions: list[int] = []
    offset = 0
    for index, token in enumerate(tokens):
        end = offset + len(token)
        if any(offset < span_end and end > span_start for span_start, span_end in spans):
            positions.append(index)
        offset = end
    return positions


class StreamConfidence:
    """Confidence of a streamed answer: `feed` each chunk's JSON payload, then read `value()`.

    For a cascade that streams the small model's answer into a buffer before deciding.
    """

    def __init__(self) -> None:
        self._tokens: dict[int, list[str]] = {}
        self._logprobs: dict[int, list[float]] = {}
        self._names: dict[int, list[str]] = {}
        self._choices: set[int] = set()

    def feed(self, payload: bytes) -> None:
        for choice in _decoder.decode(payload).choices or ():
            self._choices.add(choice.index)
            if choice.delta is not None:
                for call in choice.delta.tool_calls or ():
                    if call.function is not None and call.function.name:
                        self._names.setdefault(choice.index, []).append(call.function.name)
            if choice.logprobs is not None:
                for entry in choice.logprobs.content or ():
                    self._tokens.setdefault(choice.index, []).append(entry.token)
                    self._logprobs.setdefault(choice.index, []).append(entry.logprob)

    def value(self) -> float | None:
        if not self._choices or any(not self._tokens.get(index) for index in self._choices):
            return None
        return min(
            token_confidence(self._tokens[index], self._logprobs[index], self._names.get(index, ()))
            for index in self._choices
        )
