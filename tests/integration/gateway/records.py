"""A usage record for ledger tests: plausible defaults, any field overridden."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from gateway.accounting.ledger import UsageRecord


def usage_record(**overrides: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": str(uuid.uuid4()),
        "created_at": dt.datetime.now(dt.UTC),
        "tenant_id": str(uuid.uuid4()),
        "key_id": str(uuid.uuid4()),
        "model": "small",
        "served_model": "small",
        "deployment": "sim-small",
        "provider": "simulator",
        "route": "fixed",
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "cost_usd": Decimal("0.0000045"),
        "outcome": "ok",
        "truncated": False,
        "usage_source": "upstream",
        "duration_ms": 12,
    }
    values.update(overrides)
    return UsageRecord(**values)  # type: ignore[arg-type]  # the overrides are UsageRecord fields
