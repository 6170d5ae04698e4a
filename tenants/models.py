"""Plain data of the tenants domain, shared upward by quota/, cache/ and gateway/."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Literal, NewType

import msgspec

TenantId = NewType("TenantId", str)
KeyId = NewType("KeyId", str)
BudgetPeriod = Literal["day", "month"]


class Quota(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's limits; `None` means unlimited."""

    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens (prompt + completion) per minute."""
    budget_usd: Decimal | None = None
    """Spend allowed per budget period, in USD."""
    budget_period: BudgetPeriod = "month"
    """UTC calendar period the budget covers."""
    max_concurrency: int | None = None
    """Requests in flight at once."""
    weight: int = 1
    """Share of scarce upstream capacity relative to other tenants."""


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
