"""Upstream providers: one adapter per (client API, upstream) pair behind the `Provider` seam."""

from __future__ import annotations
