"""Cacheability: a route's `CachePolicy`, and whether one request may read and/or write the cache (`lookup_mode`)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

Mode: TypeAlias = Literal["use", "refresh", "bypass"]
"""`use`: read, and write on a miss; `refresh`: do not read, write the fresh answer; `bypass`: neither."""

Reason: TypeAlias = Literal[
    "cacheable",  # use
    "no_cache",  # refresh: `Cache-Control: no-cache` (or `max-age=0`, `Pragma: no-cache`)
    "disabled",  # bypass: the route has no cache
    "client_bypass",  # bypass: `x-sluice-cache: bypass`
    "no_store",  # bypass: `Cache-Control: no-store`
    "nondeterministic",  # bypass: sampling without `temperature: 0` or a `seed`
]

LookupResult: TypeAlias = Literal["hit", "miss", "bypass"]
"""The `result` label of `sluice_cache_lookups_total` and the value of `x-sluice-cache`."""


class CachePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A route's response cache (one per route in the configuration)."""

    enabled: bool = True
    """Whether this route answers from and fills the cache at all."""
    ttl_s: Annotated[int, msgspec.Meta(ge=1)] = 3600
    """How long an answer may be served after it was produced, in seconds."""
    max_entries_per_tenant: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Most answers kept per tenant (all routes together); past it the entries closest to expiry go."""
    max_entry_bytes: Annotated[int, msgspec.Meta(ge=1)] = 256 * 1024
    """Answers whose stored form is larger than this are not cached."""
    charge_fraction: Decimal = Decimal(0)
    """Share of the original call's cost a hit is charged, 0..1 (decimal string or number)."""
    require_deterministic: bool = True
    """Cache only requests whose answer is reproducible: `temperature: 0`, or a `seed` with `n` ≤ 1."""

    def __post_init__(self) -> None:
        if not Decimal(0) <= self.charge_fraction <= Decimal(1):
            raise ValueError(f"`charge_fraction` must be within 0..1, got {self.charge_fraction}")

    def hit_cost(self, original_cost_usd: Decimal) -> Decimal:
        """What a hit charges the tenant; the saving recorded is `original_cost_usd` minus this."""
        return original_cost_usd * self.charge_fraction


class Lookup(msgspec.Struct, frozen=True):
    """What the cache may do for one request, and why (for logs; `result` for metrics)."""

    mode: Mode
    reason: Reason

    @property
    def read(self) -> bool:
        return self.mode == "use"

    @property
    def write(self) -> bool:
        return self.mode != "bypass"

    def result(self, *, hit: bool) -> LookupResult:
        """The metric / header value once the look-up is done: `bypass` whenever the cache was not read."""
        if not self.read:
            return "bypass"
        return "hit" if hit else "miss"


_BYPASS_DISABLED = Lookup("bypass", "disabled")
_BYPASS_CLIENT = Lookup("bypass", "client_bypass")
_BYPASS_NO_STORE = Lookup("bypass", "no_store")
_BYPASS_NONDETERMINISTIC = Lookup("bypass", "nondeterministic")
_REFRESH = Lookup("refresh", "no_cache")
_USE = Lookup("use", "cacheable")


def lookup_mode(body: Mapping[str, Any], headers: Mapping[str, str], policy: CachePolicy) -> Lookup:
    """Decide from the route's policy, the client's headers and the request body; first match wins:
    disabled, `x-sluice-cache: bypass`, `Cache-Control: no-store`, not deterministic, `no-cache`, else use."""
    if not policy.enabled:
        return _BYPASS_DISABLED
    if _header(headers, "x-sluice-cache").strip().lower() == "bypass":
        return _BYPASS_CLIENT
    directives = _cache_control(_header(headers, "cache-control"))
    if "no-store" in directives:
        return _BYPASS_NO_STORE
    if policy.require_deterministic and not is_deterministic(body):
        return _BYPASS_NONDETERMINISTIC
    if "no-cache" in directives or "max-age=0" in directives or "no-cache" in _header(headers, "pragma").lower():
        return _REFRESH
    return _USE


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """`temperature: 0` (greedy: every choice is the same), or a `seed` with a single choice.

    A missing temperature is the provider's default (1 for OpenAI), so it counts as sampling; several choices
    sampled with a seed are not reproducible one by one, so `n` > 1 needs temperature 0. `logprobs` are fine.
    """
    temperature = body.get("temperature")
    if _is_number(temperature) and temperature == 0:
        return True
    n = body.get("n")
    single = n is None or (_is_number(n) and n <= 1)
    seed = body.get("seed")
    return single and _is_number(seed)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _header(headers: Mapping[str, str], name: str) -> str:
    """Headers by lower-case name, whether the mapping is case-insensitive (litestar) or a plain dict."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return ""


def _cache_control(value: str) -> frozenset[str]:
    return frozenset(directive.strip().lower().replace(" ", "") for directive in value.split(",") if directive.strip())
