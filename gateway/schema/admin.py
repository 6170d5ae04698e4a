"""Admin API wire Structs; input Structs forbid unknown fields (no mass assignment, RELIABILITY T31)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from tenants.models import Quota

TenantName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
DEFAULT_ROLL_OVERLAP_S = 86_400
MAX_ROLL_OVERLAP_S = 366 * 86_400


QuotaIn = Quota
"""The admin API takes the quota Struct itself: typed, ranged, unknown fields refused."""


def check_quota(quota: Quota) -> tuple[str, str] | None:
    """(param, message) for the first way the quota is invalid beyond its types, or None."""
    if any(budget < 0 for budget in quota.budgets()):
        return "budget_usd", "Budgets must not be negative."
    for param, names in (("keys", quota.keys), ("models", quota.models)):
        if any("\x00" in name for name in names):  # Postgres refuses NUL in jsonb (it was a 500)
            return param, f"`{param}` names must not contain NUL (\\u0000)."
    return None


def check_name(name: str) -> None:
    """Postgres refuses NUL in text (it was a 500); every other character round-trips byte for byte."""
    if "\x00" in name:
        raise ValueError("a tenant name must not contain NUL (\\u0000)")


class TenantIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TenantName
    quota: QuotaIn | None = None

    def __post_init__(self) -> None:
        check_name(self.name)


class TenantPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TenantName

    def __post_init__(self) -> None:
        check_name(self.name)


class KeyIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    expires_at: dt.datetime | None = None
    """When the key stops working (UTC); omitted → never."""


class KeyRollIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    overlap_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_ROLL_OVERLAP_S)] = DEFAULT_ROLL_OVERLAP_S
    """Seconds the old key keeps working after the roll (0: it stops at once); never extends an earlier expiry."""


class TenantOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: dt.datetime
    quota: Quota


class TenantList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[TenantOut]


class KeyOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class KeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The only response that ever contains a key's secret."""

    id: str
    tenant_id: str
    prefix: str
    key: str
    created_at: dt.datetime
    expires_at: dt.datetime | None


class KeyRolled(msgspec.Struct, frozen=True, kw_only=True):
    """A roll's answer: the new key, shown once like `KeyCreated`, and the old key's new expiry."""

    id: str
    tenant_id: str
    prefix: str
    key: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    old_key: KeyOut


class KeyList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[KeyOut]


class ModelUsage(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


class UsageGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Usage of one UTC day, model and route."""

    day: dt.date
    model: str
    route: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


class QuotaRemaining(msgspec.Struct, frozen=True, kw_only=True):
    """One limit of one level: how much is used now and what remains (`null` limit fields are absent)."""

    scope: Literal["tenant", "key", "model", "user"]
    scope_id: str
    kind: Literal["rpm", "tpm", "budget", "concurrency"]
    limit: Decimal
    used: Decimal
    remaining: Decimal
    mode: Literal["enforce", "shadow"]
    window: str
    """`60s` for rates, `day`/`month` for budgets, `now` for concurrency."""


class UsageOut(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    since: dt.datetime
    until: dt.datetime
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    by_model: list[ModelUsage]
    by_day_model_route: list[UsageGroup] = []
    quotas: list[QuotaRemaining] = []
    """Live use of every configured limit (from Redis), for the tenant, its keys and its models."""
