"""The shapes the quota domain passes around: levels, what a request may consume, what admission decided."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, TypeAlias

import msgspec

QuotaKind: TypeAlias = Literal["rpm", "tpm", "budget", "concurrency", "queue"]
Scope: TypeAlias = Literal["tenant", "key", "model", "user"]
BudgetPeriod: TypeAlias = Literal["day", "month"]


class LevelLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Limits at one level; `None` means unlimited."""

    rpm: int | None = None
    """Requests per window (a minute unless `window_s` says otherwise)."""
    tpm: int | None = None
    """Tokens (prompt estimate + completion limit, settled to real usage) per window."""
    budget_usd: Decimal | None = None
    budget_period: BudgetPeriod = "month"
    max_concurrency: int | None = None
    shadow: bool = False
    """Evaluate and count, but do not enforce."""
    window_s: int = 60
    """Length of the rpm/tpm sliding window in seconds."""

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.budget_usd is None and self.max_concurrency is None


class Level(msgspec.Struct, frozen=True, kw_only=True):
    """One place limits apply: the tenant, one of its keys, a model it calls, or one of its end users."""

    tenant_id: str
    scope: Scope
    scope_id: str
    limits: LevelLimits


class Demand(msgspec.Struct, frozen=True, kw_only=True):
    """The most a request may consume: reserved before the call, settled to the real use after."""

    request_id: str
    tokens: int
    cost_usd: Decimal


class Window(msgspec.Struct, frozen=True):
    limit: int
    remaining: int
    reset_s: float


class BudgetState(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant-level budget as admission saw it: for the budget gauges, so alerts can see exhaustion coming."""

    period: BudgetPeriod
    limit_usd: Decimal
    used_usd: Decimal
    """Settled spend plus open reservations this period, this request's reservation included."""


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """What admission decided, for the response headers, metrics and the ledger."""

    requests: Window | None = None
    tokens: Window | None = None
    admitted_at_ms: int | None = None
    """Redis clock at admission (None when no Redis limit applied)."""
    shadow_rejections: tuple[QuotaKind, ...] = ()
    """Limits in shadow mode this request would have exceeded."""
    fail_open: bool = False
    """Decided by the local fallback because Redis was unreachable."""
    budget_held: bool = False
    """With `fail_open`: its budgets were reserved in Postgres instead (settled there too)."""
    budget: BudgetState | None = None
    """The tenant-level budget, when one is enforced."""


class LevelUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What a level is using now: requests and tokens in its window, spend this period, requests in flight."""

    requests: int
    tokens: int
    spent_usd: Decimal
    reserved_usd: Decimal
    inflight: int


class BudgetTrail(msgspec.Struct, frozen=True, kw_only=True):
    """Where a request's spend is counted in Redis: kept with its usage record, so that when the record lands
    in the ledger every budget counter can be made to count it exactly once (`Limiter.reconcile`)."""

    marker: str
    """The request's settlement marker (`keys.settled_marker`)."""
    counters: tuple[str, ...]
    """The budget counters of its levels that have a budget, in admission order."""
    via_redis: bool
    """Its settlement goes to Redis (False: admitted by the fallback, budgets held and settled in Postgres)."""


class Landing(msgspec.Struct, frozen=True, kw_only=True):
    """A usage record that has reached the ledger, and the Postgres transaction (xid8) that wrote it."""

    request_id: str
    trail: BudgetTrail
    cost_nano: int
    xid: int
    admitted_at_ms: int
    """When Redis admitted it (0 when the fallback did)."""


class SpendSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A level's spend this period as one Postgres snapshot saw it, to rebuild a lost counter from."""

    spent_usd: Decimal
    """Ledger spend plus the open budget holds whose records are not in the ledger yet."""
    snapshot: str
    """`pg_current_snapshot()` of the read ("xmin:xmax:xip,…"): which later landings it could not see."""
    holds: tuple[tuple[str, Decimal], ...] = ()
    """(request id, amount) of the open holds included in `spent_usd`."""
