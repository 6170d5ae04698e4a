"""Plain data of the tenants domain, shared upward by quota/, cache/ and gateway/."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal, NewType

import msgspec

TenantId = NewType("TenantId", str)
KeyId = NewType("KeyId", str)
BudgetPeriod = Literal["day", "month"]


Mode = Literal["enforce", "shadow", "off"]
Count = Annotated[int, msgspec.Meta(ge=0, le=2_000_000_000)]


class ScopedLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of one key, one model or each end user of a tenant; `None` means unlimited."""

    rpm: Count | None = None
    tpm: Count | None = None
    budget_usd: Decimal | None = None
    budget_period: BudgetPeriod = "month"
    max_concurrency: Count | None = None
    mode: Mode = "enforce"
    """`shadow`: evaluated and counted, never enforced; `off`: ignored."""


class QuotaRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The parts of a quota beyond the tenant-wide limits (stored together as one JSON document)."""

    mode: Mode = "enforce"
    """Mode of the tenant-wide limits."""
    window_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 60
    """Length of the requests/tokens sliding window, in seconds (`rpm`/`tpm` are per window)."""
    keys: dict[str, ScopedLimits] = {}
    """Limits per API key id."""
    models: dict[str, ScopedLimits] = {}
    """Limits per model name called."""
    end_user: ScopedLimits | None = None
    """Limits applied to each distinct end user named in a request's `user` field."""
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    """Fair-queue priority tier (higher is served first)."""
    max_queue_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 30_000
    """How long a request may wait for upstream capacity by default."""
    max_queue_ms_cap: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 120_000
    """Largest wait a request may ask for with `x-sluice-max-queue-ms`."""
    max_queued: Count | None = None
    """Requests of this tenant that may wait at once per deployment."""
    log_content: bool = False
    """Compliance setting: allow prompt and completion text in this tenant's request log lines."""


class Quota(QuotaRules, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's quota: tenant-wide limits (`None` means unlimited) plus per-level rules."""

    rpm: Count | None = None
    """Requests per window (a minute by default)."""
    tpm: Count | None = None
    """Tokens (prompt + completion) per window."""
    budget_usd: Decimal | None = None
    """Spend allowed per budget period, in USD."""
    budget_period: BudgetPeriod = "month"
    """UTC calendar period the budget covers."""
    max_concurrency: Count | None = None
    """Requests in flight at once."""
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    """Share of scarce upstream capacity relative to other tenants."""

    def rules(self) -> QuotaRules:
        return QuotaRules(**{name: getattr(self, name) for name in QuotaRules.__struct_fields__})

    def budgets(self) -> list[Decimal]:
        found = [self.budget_usd] + [limits.budget_usd for limits in self.levels()]
        return [budget for budget in found if budget is not None]

    def levels(self) -> list[ScopedLimits]:
        extra = [self.end_user] if self.end_user is not None else []
        return [*self.keys.values(), *self.models.values(), *extra]


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    id: TenantId
    name: str
    created_at: dt.datetime
    quota: Quota


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A stored key: never the secret, only its peppered digest."""

    id: KeyId
    tenant_id: TenantId
    prefix: str
    digest: bytes
    pepper_version: int
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None


class TenantContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who an authenticated request belongs to; everything downstream scopes by `tenant_id`."""

    tenant_id: TenantId
    tenant_name: str
    key_id: KeyId
    key_prefix: str
    quota: Quota
    expires_at: dt.datetime | None = None
