"""How much a tenant may use: rate limits on Redis (the `limits` library), quota headers."""

from __future__ import annotations

from quota.errors import QuotaBackendError, QuotaExceededError
from quota.headers import rate_limit_headers
from quota.limiter import Admission, Limiter, RateWindow

__all__ = ["Admission", "Limiter", "QuotaBackendError", "QuotaExceededError", "RateWindow", "rate_limit_headers"]
