"""What bench/overhead.py reads back from the gateway: its request log, its /metrics and its ledger."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
from benchkit import median
from prometheus_client.parser import text_string_to_metric_families

# --- the request log ------------------------------------------------------------------------------


class _RequestLine(msgspec.Struct):
    """The fields of the gateway's per-request log line (gateway/pipeline/account.py `finish`) used here."""

    event: str = ""
    duration_ms: float | None = None
    stages_ms: dict[str, float] = {}


_line_decoder = msgspec.json.Decoder(_RequestLine)


def stage_p50s(log_path: Path, offset: int) -> dict[str, float]:
    """Median per stage (and `handler` for the whole in-handler time) of the request lines after `offset`."""
    samples: dict[str, list[float]] = {}
    with log_path.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            if not raw.startswith(b"{"):
                continue
            try:
                line = _line_decoder.decode(raw)
            except msgspec.DecodeError:
                continue
            if line.event != "request" or line.duration_ms is None:
                continue
            samples.setdefault("handler", []).append(line.duration_ms)
            for stage, ms in line.stages_ms.items():
                samples.setdefault(stage, []).append(ms)
    return {stage: median(values) for stage, values in samples.items()}


def gateway_problems(log_path: Path, limit: int = 20) -> list[str]:
    """The first request lines with an outcome other than ok, and error lines, from the gateway's log."""
    found: list[str] = []
    with log_path.open("rb") as handle:
        for raw in handle:
            text = raw.decode(errors="replace").rstrip()
            if ('"event":"request"' in text and '"outcome":"ok"' not in text) or (
                not text.startswith("{") and ("Error" in text or "Traceback" in text)
            ):
                found.append(text[:2000])
                if len(found) >= limit:
                    break
    return found


# --- /metrics and the ledger ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayCounters:
    """What the gateway's /metrics says about the run."""

    outcomes: dict[str, int]
    """`sluice_requests_total` for the bench tenant, by outcome."""
    fail_open: int
    """`sluice_quota_fail_open_total`: admissions decided locally because Redis did not answer in time."""
    auth_failures: int


def scrape(gateway_base: str, tenant_id: str) -> GatewayCounters:
    text = httpx.get(f"{gateway_base}/metrics", timeout=10).text
    outcomes: dict[str, int] = {}
    fail_open = auth_failures = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluice_requests_total" and sample.labels.get("tenant") == tenant_id:
                outcome = sample.labels.get("outcome", "?")
                outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
            elif sample.name == "sluice_quota_fail_open_total":
                fail_open += int(sample.value)
            elif sample.name == "sluice_auth_failures_total":
                auth_failures += int(sample.value)
    return GatewayCounters(outcomes, fail_open, auth_failures)


async def _ledger_count(database_url: str, tenant_id: str) -> tuple[int, float]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(cost_usd), 0) AS cost FROM usage_records WHERE tenant_id = $1",
            tenant_id,
        )
        assert row is not None
        return int(row["n"]), float(row["cost"])
    finally:
        await conn.close()


def ledger_caught_up(database_url: str, tenant_id: str, expected: int, timeout_s: float = 30.0) -> tuple[int, float]:
    """Wait until the ledger holds `expected` records for the tenant (or the timeout passes); (records, cost)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records, cost = asyncio.run(_ledger_count(database_url, tenant_id))
        if records >= expected or time.monotonic() > deadline:
            return records, cost
        time.sleep(0.5)
