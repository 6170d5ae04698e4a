"""Redis keys of the quota domain, built here only: prefix `sluice:`, the tenant in a `{hash tag}` so all
of one tenant's counters share a Redis Cluster slot and one Lua script can touch them atomically."""

from __future__ import annotations

import hashlib

from quota.types import Level

PREFIX = "sluice"


def end_user_id(user: str) -> str:
    """End-user ids come from clients: hashed, so keys and ledger rows stay short and carry no raw client text."""
    return hashlib.sha256(user.encode()).hexdigest()[:24]


def _scope_id(level: Level) -> str:
    return end_user_id(level.scope_id) if level.scope == "user" else level.scope_id


def level_keys(level: Level, period: str) -> list[str]:
    """The six keys of one level, in the order reserve.lua and settle.lua expect."""
    base = f"{PREFIX}:{{t:{level.tenant_id}}}:{level.scope}:{_scope_id(level)}"
    # `res` is per budget period, like the `bud` counter its entries add up to: a leaked reservation from
    # an earlier period must not be released from (drive negative) the current period's `reserved`.
    return [f"{base}:rpm", f"{base}:tpm", f"{base}:tpmv", f"{base}:bud:{period}", f"{base}:inf", f"{base}:res:{period}"]


def settled_marker(tenant_id: str, request_id: str) -> str:
    """A request's settlement and ledger-landing marks (hash; see lua/settle.lua and lua/reconcile.lua)."""
    return f"{PREFIX}:{{t:{tenant_id}}}:settled:{request_id}"


def late_landings(budget_counter: str) -> str:
    """Usage records that landed while `budget_counter` was being rebuilt (lua/seed.lua judges them)."""
    return f"{budget_counter}:late"


def held_amounts(budget_counter: str) -> str:
    """Per request, what `budget_counter` counted for a Postgres budget hold whose record has not landed."""
    return f"{budget_counter}:held"


def processes() -> str:
    """Sorted set of live gateway processes (heartbeats), for sizing local fallbacks."""
    return f"{PREFIX}:processes"
