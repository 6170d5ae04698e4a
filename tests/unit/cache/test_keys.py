"""Request keys and prompt fingerprints: what makes two requests the same answer, and what never does."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cache.keys import IGNORED_FIELDS, KeySpace, prompt_fingerprint, request_key

BODY: dict[str, Any] = {
    "model": "small",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
    "temperature": 0,
    "max_tokens": 64,
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BODY, **changes}


def test_request_key_is_the_same_for_the_same_request_twice() -> None:
    assert request_key("t1", "small", BODY) == request_key("t1", "small", dict(BODY))


def test_request_key_ignores_field_order_and_json_formatting() -> None:
    reordered = b"""{ "max_tokens": 64, "temperature": 0,
        "messages": [{"content": "Be brief.", "role": "system"}, {"content": "What is 2 + 2?", "role": "user"}],
        "model": "small" }"""
    assert request_key("t1", "small", reordered) == request_key("t1", "small", msgspec.json.encode(BODY))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": 0}, {"temperature": -0.0}),
        ({"max_tokens": 64}, {"max_tokens": 64.0}),
        ({"top_p": 1}, {"top_p": 1e0}),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"maximum": 10}}}]},
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"maximum": 10.0}}}]},
        ),
    ],
    ids=["zero", "negative-zero", "max-tokens", "exponent", "nested-in-tools"],
)
def test_request_key_treats_integral_numbers_alike(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert request_key("t1", "small", _with(**left)) == request_key("t1", "small", _with(**right))


def test_request_key_reads_json_escapes_as_the_characters_they_stand_for() -> None:
    escaped = b'{"messages": [{"role": "user", "content": "caf\\u00e9"}], "temperature": 0}'
    plain = '{"messages": [{"role": "user", "content": "café"}], "temperature": 0}'.encode()
    assert request_key("t1", "small", escaped) == request_key("t1", "small", plain)


def test_request_key_differs_per_tenant_and_is_scoped_by_tenant() -> None:
    first, second = request_key("t1", "small", BODY), request_key("t2", "small", BODY)
    assert first != second
    assert first.startswith("{t:t1}:")
    assert second.startswith("{t:t2}:")
    assert first.rpartition(":")[2] != second.rpartition(":")[2]  # the digest itself covers the tenant


def test_request_key_differs_per_model_called_whatever_the_body_says() -> None:
    assert request_key("t1", "small", BODY) != request_key("t1", "large", BODY)
    assert request_key("t1", "small", BODY) == request_key("t1", "small", _with(model="something-else"))


ANSWER_CHANGING: list[tuple[str, Any]] = [
    ("messages", [{"role": "user", "content": "What is 2 + 3?"}]),
    ("tools", [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]),
    ("tool_choice", "required"),
    ("response_format", {"type": "json_object"}),
    ("temperature", 0.2),
    ("top_p", 0.5),
    ("seed", 7),
    ("max_tokens", 65),
    ("max_completion_tokens", 64),
    ("n", 2),
    ("stop", ["\n"]),
    ("logprobs", True),
    ("top_logprobs", 3),
    ("frequency_penalty", 0.5),
    ("presence_penalty", 0.5),
    ("logit_bias", {"50256": -100}),
    ("parallel_tool_calls", False),
    ("reasoning_effort", "high"),
    ("modalities", ["text", "audio"]),
    ("a_field_added_next_month", 1),
]


@pytest.mark.parametrize(("field", "value"), ANSWER_CHANGING, ids=[field for field, _ in ANSWER_CHANGING])
def test_request_key_changes_with_each_answer_changing_field(field: str, value: Any) -> None:
    assert request_key("t1", "small", BODY) != request_key("t1", "small", _with(**{field: value}))


NOT_ANSWER_CHANGING: list[tuple[str, Any]] = [
    ("stream", True),
    ("stream_options", {"include_usage": True}),
    ("user", "end-user-42"),
    ("safety_identifier", "end-user-42"),
    ("metadata", {"team": "search"}),
    ("store", True),
    ("service_tier", "flex"),
    ("prompt_cache_key", "k"),
    ("prompt_cache_retention", "24h"),
]


@pytest.mark.parametrize(("field", "value"), NOT_ANSWER_CHANGING, ids=[field for field, _ in NOT_ANSWER_CHANGING])
def test_request_key_ignores_fields_that_do_not_change_the_answer(field: str, value: Any) -> None:
    assert request_key("t1", "small", BODY) == request_key("t1", "small", _with(**{field: value}))


def test_the_ignored_fields_are_exactly_those_tested_plus_the_model() -> None:
    assert {field for field, _ in NOT_ANSWER_CHANGING} | {"model"} == IGNORED_FIELDS


def test_request_key_treats_a_top_level_null_as_an_absent_field() -> None:
    assert request_key("t1", "small", BODY) == request_key("t1", "small", _with(seed=None, tools=None))


def test_request_key_keeps_nulls_inside_messages() -> None:
    with_null = [{"role": "assistant", "content": None, "tool_calls": []}, {"role": "user", "content": "x"}]
    without = [{"role": "assistant", "tool_calls": []}, {"role": "user", "content": "x"}]
    assert request_key("t1", "small", _with(messages=with_null)) != request_key("t1", "small", _with(messages=without))


@pytest.mark.parametrize("tenant_id", ["", "a}b", "a:b", "a*", "t 1", "x" * 129], ids=repr)
def test_request_key_refuses_tenant_ids_that_could_escape_their_scope(tenant_id: str) -> None:
    with pytest.raises(ValueError, match="tenant id"):
        request_key(tenant_id, "small", BODY)


def test_request_key_refuses_a_body_that_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        request_key("t1", "small", b"[1, 2]")


def test_key_space_puts_every_key_of_a_tenant_in_its_hash_slot() -> None:
    keys = KeySpace("sluice:cache")
    key = request_key("t1", "small", BODY)
    digest = key.rpartition(":")[2]
    assert keys.answer(key) == f"sluice:cache:{{t:t1}}:r:{digest}"
    assert keys.answer(key) == f"{keys.answer_index('t1')}:{digest}"
    assert keys.fill_lock(key) == f"sluice:cache:{{t:t1}}:fill:{digest}"
    assert keys.escalation("t1", "route", "fp").startswith(keys.escalation_index("t1") + ":")


def _prompt(*texts: Any, role: str = "user") -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are terse."}, *({"role": role, "content": text} for text in texts)]


@pytest.mark.parametrize(
    "variant",
    [
        "what is the capital of france",
        "What is the capital of France?",
        "  What   is the\ncapital of France ?!  ",
        "**What is the capital of France?**",
        "# What is the capital of France",
        "WHAT IS THE CAPITAL OF FRANCE.",
        "What is the capital of Ｆrance?",  # fullwidth letter: NFKC
        [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}],
    ],
    ids=["plain", "cased", "whitespace", "bold", "heading", "shouting", "fullwidth", "text-parts"],
)
def test_prompt_fingerprint_is_shared_by_near_identical_prompts(variant: Any) -> None:
    assert prompt_fingerprint(_prompt(variant)) == prompt_fingerprint(_prompt("What is the capital of France?"))


@pytest.mark.parametrize(
    "other",
    [
        _prompt("What is the capital of Spain?"),
        _prompt("What is the capital of France?", role="assistant"),
        _prompt("What is the capital of France?", "And of Spain?"),
        [
            {"role": "system", "content": "You are verbose."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        _prompt(
            [
                {"type": "text", "text": "What is the capital of France?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]
        ),
        _prompt("-5 + 3 = What is the capital of France?"),
    ],
    ids=["other-words", "other-role", "more-turns", "other-system", "with-image", "leading-sign"],
)
def test_prompt_fingerprint_differs_for_different_prompts(other: list[dict[str, Any]]) -> None:
    assert prompt_fingerprint(other) != prompt_fingerprint(_prompt("What is the capital of France?"))


def test_prompt_fingerprint_matches_tool_calls_exactly() -> None:
    def turn(arguments: str) -> list[dict[str, Any]]:
        call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
        return [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]

    assert prompt_fingerprint(turn('{"city":"Paris"}')) == prompt_fingerprint(turn('{"city":"Paris"}'))
    assert prompt_fingerprint(turn('{"city":"Paris"}')) != prompt_fingerprint(turn('{"city":"paris"}'))
