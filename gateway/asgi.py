"""ASGI entry point for server workers: settings from the environment the `serve` command prepared."""

from __future__ import annotations

import os

from gateway.api.hot_path import HotPath
from gateway.app import create_app
from gateway.observability.logging import configure
from gateway.settings import Settings, load_file_config


def app_from_environ() -> HotPath:
    settings = Settings.from_env(os.environ)
    configure(settings.log_level)
    return create_app(
        settings,
        load_file_config(settings.config),
        os.environ,
        multiprocess_dir=settings.metrics_multiproc_dir,
        processes=settings.processes,
        drain_on_sigterm=True,
    )
