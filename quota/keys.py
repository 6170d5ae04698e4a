"""Redis keys of the quota domain; the tenant sits in a `{hash tag}` so one tenant's keys share a Cluster slot."""

from __future__ import annotations

from tenants.models import TenantId

PREFIX = "sluice"


def requests_window(tenant_id: TenantId) -> str:
    return f"{PREFIX}:{{t:{tenant_id}}}:rpm"
