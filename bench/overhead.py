"""What the gateway adds to a chat call: wrk → fake upstream, side by side with wrk → `sluice serve` → fake upstream.

One run starts everything: Postgres and Valkey (embedded in a temp dir unless SLUICE_BENCH_DATABASE_URL /
SLUICE_BENCH_REDIS_URL are set), bench/fake_upstream.py pinned to its core, and one `sluice serve` worker
pinned to its own core, configured with model `bench` → an `openai` deployment at the fake upstream (priced,
so cost is computed). A tenant with an RPM limit that never triggers and a key come from the admin API, so
auth + RPM check + metrics + ledger are all on. After a warm-up, each round runs wrk for every concurrency
against the upstream directly and then through the gateway (interleaved, so both see the same machine
weather); the report quotes medians over rounds of req/s, p50/p99, the gateway/direct ratios and the
added latency (taken per round, side by side), the gateway's peak RSS and CPU per request, the issue's
targets and its peer figures. It also checks that no non-2xx answers occurred and that the ledger caught up.

    python bench/overhead.py                       # make bench
    python bench/overhead.py --duration 5 --rounds 5 --concurrency 1,64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from benchkit import (
    BENCH_DIR,
    Child,
    OtherLoad,
    PeakRss,
    cpu_count,
    cpu_seconds,
    free_port,
    log,
    median,
    pinned,
    wait_for_port,
)
from overhead_report import Measurements, Run, render
from prometheus_client.parser import text_string_to_metric_families
from wrkload import require_wrk, run_wrk, write_script

RPM_LIMIT = 100_000_000
"""High enough never to refuse a request, so the RPM check runs but never decides."""
CHAT_BODY = msgspec.json.encode(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
)
CONFIG_TOML = """
[[deployments]]
kind = "openai"
name = "bench-upstream"
base_url = "http://127.0.0.1:{port}/v1"
model = "bench-upstream"
api_key_env = "BENCH_UPSTREAM_KEY"
max_concurrency = 256
timeouts = {{ connect_s = 2, first_byte_s = 10, idle_s = 10 }}

[[models]]
name = "bench"
route = {{ policy = "fixed", deployment = "bench-upstream" }}

[prices.bench-upstream]
input = 0.15
output = 0.60
"""


@dataclass(frozen=True, slots=True)
class Placement:
    gateway_core: int
    upstream_core: int
    load_core: int
    """wrk, Postgres, Valkey and this script."""


@dataclass(slots=True)
class Stack:
    """Everything the benchmark started, torn down in reverse by the ExitStack."""

    database_url: str
    redis_url: str
    upstream_port: int
    gateway: Child | None = None
    gateway_base: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


# --- start-up -----------------------------------------------------------------------------------


def start_services(stack: contextlib.ExitStack, workdir: Path) -> tuple[str, str]:
    """Postgres and Redis URLs: from SLUICE_BENCH_*_URL, or embedded servers in `workdir` (stopped at exit)."""
    database_url = os.environ.get("SLUICE_BENCH_DATABASE_URL") or None
    redis_url = os.environ.get("SLUICE_BENCH_REDIS_URL") or None
    if database_url is None or redis_url is None:
        from gateway.embedded import EmbeddedServers

        log(f"starting embedded Postgres and Valkey under {workdir / 'services'}")
        servers = EmbeddedServers(workdir / "services")
        urls = servers.start()
        stack.callback(servers.stop)
        database_url = database_url or urls.database_url
        redis_url = redis_url or urls.redis_url
    return database_url, redis_url


def start_upstream(stack: contextlib.ExitStack, workdir: Path, core: int) -> int:
    port = free_port()
    command = pinned([sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", str(port)], core)
    upstream = Child("fake-upstream", command, workdir)
    stack.callback(upstream.stop)
    wait_for_port(port, upstream.process)
    return port


def start_gateway(stack: contextlib.ExitStack, workdir: Path, state: Stack, core: int, log_level: str) -> Child:
    config = workdir / "sluice.toml"
    config.write_text(CONFIG_TOML.format(port=state.upstream_port))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_DATABASE_URL": state.database_url,
        "SLUICE_REDIS_URL": state.redis_url,
        "SLUICE_ADMIN_TOKEN": state.admin_token,
        "SLUICE_KEY_PEPPER": "1:" + secrets.token_urlsafe(24),
        "SLUICE_CONFIG": str(config),
        "SLUICE_DATA_DIR": str(workdir / "gateway-data"),
        "SLUICE_LOG_LEVEL": log_level,
        "SLUICE_DRAIN_TIMEOUT_S": "5",
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
    }
    command = pinned([sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"], core)
    gateway = Child("gateway", command, workdir, env)
    stack.callback(gateway.stop)
    state.gateway, state.gateway_base = gateway, f"http://127.0.0.1:{port}"
    _wait_ready(gateway, state.gateway_base)
    return gateway


def _wait_ready(gateway: Child, base: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise SystemExit(f"sluice serve exited {gateway.process.returncode}:\n{gateway.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"sluice serve not ready after {timeout_s} s:\n{gateway.tail()}")


def make_tenant_key(state: Stack) -> tuple[str, str]:
    """A tenant with a never-reached RPM limit and one key for it, through the admin API."""
    headers = {"authorization": f"Bearer {state.admin_token}"}
    with httpx.Client(base_url=state.gateway_base, headers=headers, timeout=30) as admin:
        tenant = admin.post("/admin/tenants", json={"name": "bench", "quota": {"rpm": RPM_LIMIT}})
        tenant.raise_for_status()
        tenant_id = str(tenant.json()["id"])
        key = admin.post(f"/admin/tenants/{tenant_id}/keys", json={})
        key.raise_for_status()
        return tenant_id, str(key.json()["key"])


def smoke_test(state: Stack, api_key: str) -> str:
    """One call through the gateway: it must answer 200 with a cost; returns the cost header."""
    response = httpx.post(
        f"{state.gateway_base}/v1/chat/completions",
        content=CHAT_BODY,
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        timeout=10,
    )
    if response.status_code != 200:
        raise SystemExit(f"gateway smoke test: {response.status_code} {response.text}")
    return str(response.headers.get("x-sluice-cost-usd", "?"))


# --- measuring ----------------------------------------------------------------------------------


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


def measure(
    state: Stack, script: Path, placement: Placement, concurrencies: list[int], duration_s: int, rounds: int
) -> list[Run]:
    assert state.gateway is not None
    urls = {
        "direct": f"http://127.0.0.1:{state.upstream_port}/v1/chat/completions",
        "gateway": f"{state.gateway_base}/v1/chat/completions",
    }
    runs: list[Run] = []
    for round_no in range(1, rounds + 1):
        for conc in concurrencies:
            for target, url in urls.items():
                cpu_before = cpu_seconds(state.gateway.pid)
                log_offset = state.gateway.log_path.stat().st_size
                result = run_wrk(url, script, connections=conc, duration_s=duration_s, core=placement.load_core)
                gateway_cpu = cpu_seconds(state.gateway.pid) - cpu_before
                if target == "gateway":
                    stages = stage_p50s(state.gateway.log_path, log_offset)
                    runs.append(Run(round_no, target, conc, result, gateway_cpu, stages))
                else:
                    runs.append(Run(round_no, target, conc, result, 0.0, {}))
                log(
                    f"round {round_no}/{rounds} c={conc:<3} {target:<7} {result.rps:>9,.0f} req/s  "
                    f"p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms  non-2xx {result.non_2xx}"
                )
                time.sleep(0.5)
    return runs


def warm_up(state: Stack, script: Path, placement: Placement, seconds: int) -> int:
    """Warm both paths (connection pools, auth cache, code paths); returns gateway requests sent."""
    if seconds <= 0:
        return 0
    log(f"warming up for {2 * seconds} s")
    run_wrk(
        f"http://127.0.0.1:{state.upstream_port}/v1/chat/completions",
        script, connections=16, duration_s=seconds, core=placement.load_core,
    )  # fmt: skip
    result = run_wrk(
        f"{state.gateway_base}/v1/chat/completions", script, connections=16, duration_s=seconds,
        core=placement.load_core,
    )  # fmt: skip
    if result.non_2xx:
        raise SystemExit(f"warm-up: the gateway answered {result.non_2xx} non-2xx responses; see its log")
    return result.requests


# --- ledger check -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayCounters:
    """What the gateway's /metrics says about the run."""

    outcomes: dict[str, int]
    """`sluice_requests_total` for the bench tenant, by outcome."""
    fail_open: int
    """`sluice_quota_fail_open_total`: admissions decided locally because Redis did not answer in time."""
    auth_failures: int


def scrape(state: Stack, tenant_id: str) -> GatewayCounters:
    text = httpx.get(f"{state.gateway_base}/metrics", timeout=10).text
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


def ledger_caught_up(state: Stack, tenant_id: str, expected: int, timeout_s: float = 30.0) -> tuple[int, float]:
    """Wait until the ledger holds `expected` records for the tenant (or the timeout passes); (records, cost)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records, cost = asyncio.run(_ledger_count(state.database_url, tenant_id))
        if records >= expected or time.monotonic() > deadline:
            return records, cost
        time.sleep(0.5)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="repeated rounds; medians are quoted (default 3)")
    parser.add_argument(
        "--concurrency", default="1,16,64", help="comma-separated wrk connection counts (default 1,16,64)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target (default 3)")
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--upstream-core", type=int, default=1 % cpus)
    parser.add_argument(
        "--load-core", type=int, default=2 if cpus > 2 else 1 % cpus, help="core for wrk, Postgres and Valkey"
    )
    parser.add_argument("--log-level", default="INFO", help="gateway SLUICE_LOG_LEVEL (default INFO: a line/request)")
    args = parser.parse_args(argv)
    args.concurrency = sorted({int(c) for c in str(args.concurrency).split(",") if c.strip()})
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_wrk()
    placement = Placement(args.gateway_core, args.upstream_core, args.load_core)
    cpus = cpu_count()  # before pinning ourselves below
    started = time.monotonic()
    # This script and everything it starts without an explicit core (Postgres, Valkey) run on the load core.
    os.sched_setaffinity(0, {placement.load_core})
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        database_url, redis_url = start_services(stack, workdir)
        state = Stack(database_url, redis_url, start_upstream(stack, workdir, placement.upstream_core))
        gateway = start_gateway(stack, workdir, state, placement.gateway_core, args.log_level)
        log(f"gateway pid {gateway.pid} on core {placement.gateway_core}, upstream on {placement.upstream_core}")
        tenant_id, api_key = make_tenant_key(state)
        cost = smoke_test(state, api_key)
        script = write_script(workdir / "chat.lua", CHAT_BODY, api_key)
        with PeakRss(gateway.pid).sampling() as rss:
            warmup_requests = warm_up(state, script, placement, args.warmup)
            other_load = OtherLoad()
            runs = measure(state, script, placement, args.concurrency, args.duration, args.rounds)
            other_cpus = other_load.cpus()
        counters = scrape(state, tenant_id)
        records, ledger_cost = ledger_caught_up(state, tenant_id, sum(counters.outcomes.values()))
        measurements = Measurements(
            runs=runs,
            duration_s=args.duration,
            rounds=args.rounds,
            placement=(placement.gateway_core, placement.upstream_core, placement.load_core),
            log_level=args.log_level,
            rpm_limit=RPM_LIMIT,
            peak_rss_bytes=rss.peak_bytes,
            peak_rss_processes=rss.peak_processes,
            smoke_cost=cost,
            warmup_requests=warmup_requests,
            ledger_records=records,
            ledger_cost_usd=ledger_cost,
            gateway_outcomes=counters.outcomes,
            fail_open=counters.fail_open,
            auth_failures=counters.auth_failures,
            other_cpus=other_cpus,
            cpus=cpus,
            external_services=bool(os.environ.get("SLUICE_BENCH_DATABASE_URL")),
        )
        print(render(measurements), flush=True)
    log(f"total wall time {time.monotonic() - started:.0f} s")
    if not measurements.healthy:
        sys.exit(1)


if __name__ == "__main__":
    main()
