"""Confidence is the geometric mean token probability of the answer (of the tool name's tokens for a tool call)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from gateway.routing.confidence import StreamConfidence, confidence, token_confidence


def entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


def body(*choices: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"id": "x", "object": "chat.completion", "choices": list(choices)})


def text_choice(tokens: list[tuple[str, float]] | None, index: int = 0) -> dict[str, Any]:
    content = "".join(token for token, _ in tokens or [])
    logprobs = {"content": [entry(t, lp) for t, lp in tokens], "refusal": None} if tokens is not None else None
    message = {"role": "assistant", "content": content}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": "stop"}


def test_confidence_is_exp_of_the_mean_token_logprob() -> None:
    tokens = [("The", -0.1), (" sea", -0.5), (" is", -0.3)]
    assert confidence(body(text_choice(tokens))) == pytest.approx(math.exp(-0.3))


def test_a_certain_answer_has_confidence_one() -> None:
    assert confidence(body(text_choice([("Yes", 0.0)]))) == 1.0


@pytest.mark.parametrize(
    "choice",
    [text_choice(None), text_choice([])],
    ids=["logprobs-null", "content-empty"],
)
def test_an_answer_without_logprobs_has_no_confidence(choice: dict[str, Any]) -> None:
    assert confidence(body(choice)) is None


def test_the_least_confident_choice_speaks_for_the_answer() -> None:
    sure = text_choice([("A", -0.01)], index=0)
    unsure = text_choice([("B", -2.0)], index=1)
    assert confidence(body(sure, unsure)) == pytest.approx(math.exp(-2.0))


def test_a_tool_call_counts_only_the_tokens_that_spell_the_tool_name() -> None:
    tokens = [("get", -0.2), ("_weather", -0.4), ('{"city"', -3.0), (': "Oslo"}', -3.0)]
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        "logprobs": {"content": [entry(t, lp) for t, lp in tokens]},
        "finish_reason": "tool_calls",
    }
    assert confidence(body(choice)) == pytest.approx(math.exp(-0.3))


def test_a_tool_name_not_among_the_tokens_falls_back_to_every_token() -> None:
    assert token_confidence(["a", "b"], [-1.0, -3.0], ["lookup"]) == pytest.approx(math.exp(-2.0))


def test_a_tool_name_inside_raw_tool_call_text_is_found() -> None:
    """Providers that return the raw tool-call text as tokens (vLLM, llama.cpp) are handled too."""
    tokens = ['<tool_call>{"name": "', "get", "_time", '", "arguments": {}}']
    assert token_confidence(tokens, [-5.0, -0.1, -0.3, -5.0], ["get_time"]) == pytest.approx(math.exp(-0.2))


def test_stream_confidence_reads_logprobs_and_tool_names_from_chunks() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [entry("Hi", -0.2)]}}]},
        {"choices": [{"index": 0, "delta": {"content": " there"}, "logprobs": {"content": [entry(" there", -0.4)]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]
    stream = StreamConfidence()
    for chunk in chunks:
        stream.feed(msgspec.json.encode(chunk))
    assert stream.value() == pytest.approx(math.exp(-0.3))


def test_stream_without_logprobs_has_no_confidence() -> None:
    stream = StreamConfidence()
    stream.feed(msgspec.json.encode({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}))
    assert stream.value() is None
