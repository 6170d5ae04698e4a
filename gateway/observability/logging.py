"""Structured logs: one JSON line per request through structlog, keys and prompts never included.

structlog over the stdlib on purpose: its bound loggers cost one no-op call below the level,
and it renders straight to bytes with msgspec, so a log line per request stays cheap.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

_encoder = msgspec.json.Encoder()


def _serialize(event: dict[str, Any], **_: Any) -> bytes:
    return _encoder.encode(event)


def configure(level: str) -> None:
    numeric = logging.getLevelNamesMapping()[level]
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s", force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )


_REQUEST_LOGGER = structlog.get_logger("sluice.request")  # a lazy proxy: binds on first use, after configure()


def request_logger() -> Any:
    return _REQUEST_LOGGER
