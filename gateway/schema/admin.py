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


class QuotaIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rpm: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] | None = None
    tpm: Annotated[int, msgspec.Meta(ge=0, le=2_000_000_000)] | None = None
    budget_usd: Decimal | None = None
    budget_period: Literal["day", "month"] = "month"
    max_concurrency: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1

    def to_quota(self) -> Quota:
        return Quota(
            rpm=self.rpm,
            tpm=self.tpm,
            budget_usd=self.budget_usd,
            budget_period=self.budget_period,
            max_concurrency=self.max_concurrency,
            weight=self.weight,
        )


class TenantIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TenantName
    quota: QuotaIn | None = None


class TenantPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TenantName


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


class UsageOut(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    since: dt.datetime
    until: dt.datetime
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    by_model: list[ModelUsage]
