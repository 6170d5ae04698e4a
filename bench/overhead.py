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
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchkit import OtherLoad, PeakRss, cpu_count, cpu_seconds, log
from gateway_probe import gateway_problems, ledger_caught_up, scrape, stage_p50s
from overhead_report import Measurements, Run, render
from overhead_stack import (
    CHAT_BODY,
    RPM_LIMIT,
    Stack,
    make_tenant_key,
    services_label,
    smoke_test,
    start_gateway,
    start_services,
    start_upstream,
)
from wrkload import require_wrk, run_wrk, write_script


@dataclass(frozen=True, slots=True)
class Placement:
    gateway_core: int
    upstream_core: int
    load_core: int
    """wrk, Postgres, Valkey and this script."""


# --- measuring ----------------------------------------------------------------------------------


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
        counters = scrape(state.gateway_base, tenant_id)
        # Only charged calls (outcome ok) have a usage record; refused or failed ones are counted, not ledgered.
        records, ledger_cost = ledger_caught_up(state.database_url, tenant_id, counters.outcomes.get("ok", 0))
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
            services=services_label(placement.load_core),
        )
        print(render(measurements), flush=True)
        if not measurements.healthy:
            for line in gateway_problems(gateway.log_path):
                log(f"gateway log: {line}")
    log(f"total wall time {time.monotonic() - started:.0f} s")
    if not measurements.healthy:
        sys.exit(1)


if __name__ == "__main__":
    main()
