"""How much a tenant may use: atomic reservations on Redis, settlement, local fallbacks, quota headers."""

from __future__ import annotations

from quota.errors import QuotaBackendError, QuotaExceededError
from quota.headers import rate_limit_headers
from quota.limiter import Limiter, Reservation, SpendSource, to_nano
from quota.types import Admission, Demand, Level, LevelLimits, LevelUsage, QuotaKind, Window

__all__ = [
    "Admission",
    "Demand",
    "Level",
    "LevelLimits",
    "LevelUsage",
    "Limiter",
    "QuotaBackendError",
    "QuotaExceededError",
    "QuotaKind",
    "Reservation",
    "SpendSource",
    "Window",
    "rate_limit_headers",
    "to_nano",
]
