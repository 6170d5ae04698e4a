"""Cacheability: the route policy as configuration, and which requests may read or write the cache."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from cache.policy import CachePolicy, Lookup, lookup_mode

POLICY = CachePolicy()
GREEDY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}

CASES: list[tuple[str, dict[str, Any], dict[str, str], CachePolicy, Lookup]] = [
    ("temperature-0", GREEDY, {}, POLICY, Lookup("use", "cacheable")),
    ("temperature-0.0", {**GREEDY, "temperature": 0.0}, {}, POLICY, Lookup("use", "cacheable")),
    ("seed", {**GREEDY, "temperature": 0.7, "seed": 1}, {}, POLICY, Lookup("use", "cacheable")),
    ("seed-default-temperature", {"messages": [], "seed": 1}, {}, POLICY, Lookup("use", "cacheable")),
    ("seed-n-1", {**GREEDY, "temperature": 1, "seed": 1, "n": 1}, {}, POLICY, Lookup("use", "cacheable")),
    ("greedy-n-3", {**GREEDY, "n": 3}, {}, POLICY, Lookup("use", "cacheable")),
    ("greedy-logprobs", {**GREEDY, "logprobs": True, "top_logprobs": 2}, {}, POLICY, Lookup("use", "cacheable")),
    ("greedy-stream", {**GREEDY, "stream": True}, {}, POLICY, Lookup("use", "cacheable")),
    ("sampling", {**GREEDY, "temperature": 0.7}, {}, POLICY, Lookup("bypass", "nondeterministic")),
    ("default-temperature", {"messages": []}, {}, POLICY, Lookup("bypass", "nondeterministic")),
    ("null-temperature", {**GREEDY, "temperature": None}, {}, POLICY, Lookup("bypass", "nondeterministic")),
    ("seed-n-2", {**GREEDY, "temperature": 1, "seed": 1, "n": 2}, {}, POLICY, Lookup("bypass", "nondeterministic")),
    ("seed-not-a-number", {**GREEDY, "temperature": 1, "seed": "1"}, {}, POLICY, Lookup("bypass", "nondeterministic")),
    ("temperature-false", {**GREEDY, "temperature": False}, {}, POLICY, Lookup("bypass", "nondeterministic")),
    (
        "sampling-allowed",
        {**GREEDY, "temperature": 0.7},
        {},
        CachePolicy(require_deterministic=False),
        Lookup("use", "cacheable"),
    ),
    ("disabled", GREEDY, {}, CachePolicy(enabled=False), Lookup("bypass", "disabled")),
    ("no-store", GREEDY, {"cache-control": "no-store"}, POLICY, Lookup("bypass", "no_store")),
    ("no-store-listed", GREEDY, {"Cache-Control": "private, No-Store"}, POLICY, Lookup("bypass", "no_store")),
    ("no-cache", GREEDY, {"cache-control": "no-cache"}, POLICY, Lookup("refresh", "no_cache")),
    ("max-age-0", GREEDY, {"cache-control": "max-age=0"}, POLICY, Lookup("refresh", "no_cache")),
    ("pragma", GREEDY, {"pragma": "no-cache"}, POLICY, Lookup("refresh", "no_cache")),
    ("no-cache-and-no-store", GREEDY, {"cache-control": "no-cache, no-store"}, POLICY, Lookup("bypass", "no_store")),
    ("max-age-60", GREEDY, {"cache-control": "max-age=60"}, POLICY, Lookup("use", "cacheable")),
    ("client-bypass", GREEDY, {"x-sluice-cache": "bypass"}, POLICY, Lookup("bypass", "client_bypass")),
    ("client-bypass-cased", GREEDY, {"X-Sluice-Cache": " Bypass "}, POLICY, Lookup("bypass", "client_bypass")),
    ("client-other-value", GREEDY, {"x-sluice-cache": "hit"}, POLICY, Lookup("use", "cacheable")),
    (
        "no-cache-while-sampling",
        {**GREEDY, "temperature": 1},
        {"cache-control": "no-cache"},
        POLICY,
        Lookup("bypass", "nondeterministic"),
    ),
]


@pytest.mark.parametrize(("body", "headers", "policy", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lookup_mode(body: dict[str, Any], headers: dict[str, str], policy: CachePolicy, expected: Lookup) -> None:
    assert lookup_mode(body, headers, policy) == expected


@pytest.mark.parametrize(
    ("lookup", "hit", "result", "read", "write"),
    [
        (Lookup("use", "cacheable"), True, "hit", True, True),
        (Lookup("use", "cacheable"), False, "miss", True, True),
        (Lookup("refresh", "no_cache"), False, "bypass", False, True),
        (Lookup("bypass", "no_store"), False, "bypass", False, False),
    ],
    ids=["hit", "miss", "refresh", "bypass"],
)
def test_lookup_reads_writes_and_labels_the_metric(
    lookup: Lookup, hit: bool, result: str, read: bool, write: bool
) -> None:
    assert (lookup.result(hit=hit), lookup.read, lookup.write) == (result, read, write)


def test_cache_policy_decodes_from_toml_with_a_decimal_charge_fraction() -> None:
    policy = msgspec.toml.decode(b'ttl_s = 60\ncharge_fraction = "0.1"', type=CachePolicy)
    assert policy == CachePolicy(ttl_s=60, charge_fraction=Decimal("0.1"))
    assert msgspec.toml.decode(b"charge_fraction = 0.25", type=CachePolicy).charge_fraction == Decimal("0.25")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"charge_fraction = 1.5", "charge_fraction"),
        (b'charge_fraction = "-0.1"', "charge_fraction"),
        (b"ttl_s = 0", "ttl_s"),
        (b"max_entries_per_tenant = 0", "max_entries_per_tenant"),
        (b"ttl = 60", "ttl"),
    ],
    ids=["fraction-above-1", "fraction-negative", "ttl-zero", "no-entries", "unknown-field"],
)
def test_cache_policy_refuses_bad_configuration_naming_the_field(source: bytes, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.toml.decode(source, type=CachePolicy)


def test_hit_cost_is_the_configured_fraction_of_the_original_cost() -> None:
    assert CachePolicy().hit_cost(Decimal("0.0042")) == 0
    assert CachePolicy(charge_fraction=Decimal("0.25")).hit_cost(Decimal("0.0040")) == Decimal("0.001")
