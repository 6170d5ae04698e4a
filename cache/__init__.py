"""What was already answered: the tenant-scoped decision cache (not built yet; see the routing issue)."""

from __future__ import annotations

__all__: list[str] = []
