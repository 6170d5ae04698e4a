"""Who is calling: tenants, their API keys (only digests stored), and authentication."""

from __future__ import annotations

from tenants.auth import Authenticator
from tenants.errors import InvalidKeyError, KeyRevokedError, TenantNotFoundError, TenantsBackendError
from tenants.keys import IssuedKey, KeyHasher, ParsedKey, issue_key, parse_key
from tenants.models import ApiKey, KeyId, Quota, QuotaRules, ScopedLimits, Tenant, TenantContext, TenantId
from tenants.store import TenantStore

__all__ = [
    "ApiKey",
    "Authenticator",
    "InvalidKeyError",
    "IssuedKey",
    "KeyHasher",
    "KeyId",
    "KeyRevokedError",
    "ParsedKey",
    "Quota",
    "QuotaRules",
    "ScopedLimits",
    "Tenant",
    "TenantContext",
    "TenantId",
    "TenantNotFoundError",
    "TenantStore",
    "TenantsBackendError",
    "issue_key",
    "parse_key",
]
