"""Errors of the quota domain; `gateway/errors.py` maps them to 429 / 503."""

from __future__ import annotations

from typing import Literal

QuotaKind = Literal["rpm", "tpm", "budget", "concurrency", "queue"]


class QuotaExceededError(Exception):
    """A request would exceed a limit; `retry_after` is seconds until it could succeed (None: not soon)."""

    def __init__(self, kind: QuotaKind, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


class QuotaBackendError(Exception):
    """Neither Redis nor (for budgets) its Postgres fallback could answer an admission call."""
