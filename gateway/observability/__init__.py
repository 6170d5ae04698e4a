"""Metrics and logs: one consistent scheme, bounded label cardinality."""

from __future__ import annotations
