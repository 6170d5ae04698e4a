"""Thin HTTP handlers: `/v1` (tenant API), `/admin` (operators), and operations endpoints."""

from __future__ import annotations
