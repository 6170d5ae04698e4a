"""Accounting: token counts, prices, and the batched usage ledger."""

from __future__ import annotations
