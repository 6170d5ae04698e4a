"""Errors of the tenants domain; `gateway/errors.py` maps them to HTTP."""

from __future__ import annotations


class TenantsError(Exception):
    """Base of every tenants error."""


class InvalidKeyError(TenantsError):
    """The presented API key is malformed, unknown, revoked or expired.

    One class for every reason on purpose: callers must answer all of them identically.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TenantNotFoundError(TenantsError):
    """No tenant (or key) with that id exists, as far as this caller may know."""


class KeyRevokedError(TenantsError):
    """The key was revoked; it cannot be rolled (issue a new key instead)."""


class TenantsBackendError(TenantsError):
    """Postgres could not answer; callers answer 503, never 401."""
