"""Redis key layout of the quota domain: one hash-tagged slot per tenant, no raw client text, budgets per period."""

from __future__ import annotations

from quota.keys import level_keys, settled_marker
from quota.types import Level, LevelLimits


def _level(scope: str, scope_id: str) -> Level:
    return Level(tenant_id="t-1", scope=scope, scope_id=scope_id, limits=LevelLimits(rpm=1))  # type: ignore[arg-type]  # literal scopes below


def test_level_keys_share_the_tenants_hash_tag() -> None:
    names = [*level_keys(_level("key", "k-1"), "202611"), settled_marker("t-1", "req-1")]
    assert all(name.startswith("sluice:{t:t-1}:") for name in names)


def test_user_level_keys_carry_a_hash_of_the_client_id_never_the_id() -> None:
    names = level_keys(_level("user", "alice@example.com"), "202611")
    assert not any("alice" in name for name in names)
    assert names == level_keys(_level("user", "alice@example.com"), "202611"), "the same user, the same keys"
    assert names != level_keys(_level("user", "bob@example.com"), "202611")


def test_budget_and_its_reservations_are_kept_per_period_and_the_windows_are_not() -> None:
    may, june = level_keys(_level("tenant", "t-1"), "202605"), level_keys(_level("tenant", "t-1"), "202606")
    changed = [i for i, (a, b) in enumerate(zip(may, june, strict=True)) if a != b]
    assert changed == [3, 5], "`bud` and `res` change with the period; rpm, tpm, tpmv and inf do not"
