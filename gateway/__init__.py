"""Sluice's HTTP gateway: the app, the request pipeline, providers, accounting and the CLI."""

from __future__ import annotations

from gateway.app import create_app
from gateway.settings import FileConfig, Settings, load_file_config

__all__ = ["FileConfig", "Settings", "create_app", "load_file_config"]
