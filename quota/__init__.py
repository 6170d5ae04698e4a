"""How much a tenant may use: atomic reservations on Redis, settlement, local fallbacks, quota headers."""

from __future__ import annotations

from quota.errors import QuotaBackendError, QuotaExceededError
from quota.headers import rate_limit_headers
from quota.limiter import Limiter, Reservation, SpendSource, to_nano
from quota.types import (
    Admission,
    BudgetTrail,
    Demand,
    Landing,
    Level,
    LevelLimits,
    LevelUsage,
    QuotaKind,
    SpendSnapshot,
    Window,
)

__all__ = [
    "Admission",
    "BudgetTrail",
    "Demand",
    "Landing",
    "Level",
    "LevelLimits",
    "LevelUsage",
    "Limiter",
    "QuotaBackendError",
    "QuotaExceededError",
    "QuotaKind",
    "Reservation",
    "SpendSnapshot",
    "SpendSource",
    "Window",
    "rate_limit_headers",
    "to_nano",
]
