"""Fair queue vs plain FIFO in front of a deployment of fixed capacity, under a noisy tenant's flood.

A fake upstream (aiohttp, its own process) serves at most `--capacity` calls at once, each taking
`--latency-ms`. The same load goes, in every round, first through a plain FIFO (`asyncio.Semaphore` of the
capacity: what a gateway without a fair queue does) and then through `quota.fairness.FairQueue` on a real
Redis (`SLUICE_BENCH_REDIS_URL`, else an embedded Valkey in a temp dir):

- the noisy tenant: `--noisy` (200) closed loops, each sending its next request as soon as one returns;
- `--quiet` (3) quiet tenants, each `--quiet-agents` (2) agents that call at a steady pace, `--quiet-rps`
  (5) requests a second per tenant in all. An agent waits for its answer before its next call (a late
  answer skips the ticks it missed), so a slow queue costs a quiet tenant throughput, not only latency.

All requests cost the same tokens and all weights are equal. Printed, as medians over `--rounds` (3):
each tenant's share of the completions in the measured window next to its max-min fair share, Jain's
fairness index over throughput normalised by that fair share (1.0 = every tenant got its fair share;
raw counts would score a tenant that asks for little as unfairly treated), the quiet tenants' p50/p99
queue wait, the noisy tenant's p50, throughput and the upstream's peak concurrency.

    .venv/bin/python bench/fairness.py                       # 3 rounds × 2 gates × (2 s + 10 s): ~80 s
    .venv/bin/python bench/fairness.py --rounds 5 --duration 20

The exit status is 1 if the upstream ever saw more than `--capacity` calls at once or the fair queue
left a slot or an entry behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from benchkit import BENCH_DIR, Child, free_port, log, median, percentile, table, wait_for_port

from gateway.embedded import EmbeddedServers
from quota.fairness import FairQueue, deployment_keys

NOISY = "noisy"
COST_TOKENS = 500
COMPLETION = {
    "id": "chatcmpl-fair",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "bench-upstream",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 400, "completion_tokens": 100, "total_tokens": 500},
}
BODY = {"model": "bench-upstream", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}

Gate = Callable[[str], AbstractAsyncContextManager[float]]
"""Admission in front of the upstream: enter with a tenant, get the seconds waited, leave to free the slot."""


# --- the fake upstream (its own process) ----------------------------------------------------------


async def serve_upstream(port: int, capacity: int, latency_s: float) -> None:
    """Serve chat completions, at most `capacity` at once, each `latency_s` long; `/stats` reports the peak."""
    slots = asyncio.Semaphore(capacity)
    stats = {"inflight": 0, "peak": 0, "served": 0}

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        async with slots:
            stats["inflight"] += 1
            stats["peak"] = max(stats["peak"], stats["inflight"])
            try:
                await asyncio.sleep(latency_s)
            finally:
                stats["inflight"] -= 1
            stats["served"] += 1
        return web.json_response(COMPLETION)

    async def read_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset_stats(_: web.Request) -> web.Response:
        stats.update(peak=stats["inflight"], served=0)
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", read_stats)
    app.router.add_post("/stats/reset", reset_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


# --- the load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    capacity: int
    latency_s: float
    noisy: int
    quiet: int
    quiet_agents: int
    quiet_rps: float
    warmup_s: float
    duration_s: float

    @property
    def quiet_tenants(self) -> list[str]:
        return [f"quiet-{i + 1}" for i in range(self.quiet)]


@dataclass
class Tally:
    """What one gate delivered in the measured window: completions per tenant and the waits behind them."""

    window: tuple[float, float] = (math.inf, math.inf)
    completions: Counter[str] = field(default_factory=Counter)
    waits: dict[str, list[float]] = field(default_factory=dict)

    def record(self, tenant: str, waited: float) -> None:
        if self.window[0] <= time.monotonic() < self.window[1]:
            self.completions[tenant] += 1
            self.waits.setdefault(tenant, []).append(waited)


async def drive(gate: Gate, load: Load, session: aiohttp.ClientSession, url: str) -> Tally:
    tally = Tally()

    async def call(tenant: str) -> None:
        async with gate(tenant) as waited, session.post(url, json=BODY) as response:
            response.raise_for_status()
            await response.read()
        tally.record(tenant, waited)

    async def flood() -> None:
        while True:
            await call(NOISY)

    async def agent(tenant: str, offset_s: float) -> None:
        period = load.quiet_agents / load.quiet_rps
        next_at = time.monotonic() + offset_s
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await call(tenant)
            next_at = max(next_at + period, time.monotonic())

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(flood()) for _ in range(load.noisy)]
        for tenant in load.quiet_tenants:
            for k in range(load.quiet_agents):
                offset = k / load.quiet_rps + load.quiet_tenants.index(tenant) * 0.01
                tasks.append(group.create_task(agent(tenant, offset)))
        await asyncio.sleep(load.warmup_s)
        start = time.monotonic()
        tally.window = (start, start + load.duration_s)
        await asyncio.sleep(load.duration_s)
        for task in tasks:
            task.cancel()
    return tally


def fifo_gate(capacity: int) -> Gate:
    slots = asyncio.Semaphore(capacity)

    @contextlib.asynccontextmanager
    async def gate(tenant: str) -> AsyncIterator[float]:
        del tenant  # FIFO does not look at who is asking
        started = time.monotonic()
        async with slots:
            yield time.monotonic() - started

    return gate


def fair_gate(queue: FairQueue) -> Gate:
    def gate(tenant: str) -> AbstractAsyncContextManager[float]:
        return queue.slot(
            tenant_id=tenant, request_id=uuid.uuid4().hex, weight=1, cost=COST_TOKENS, deadline_s=600, max_queued=None
        )

    return gate


# --- one round ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One gate's figures in one round."""

    shares: dict[str, float]
    fair_shares: dict[str, float]
    jain: float
    quiet_p50_ms: float
    quiet_p99_ms: float
    noisy_p50_ms: float
    throughput_rps: float
    upstream_peak: int


def max_min_fair(total: float, demands: Mapping[str, float]) -> dict[str, float]:
    """Water-filling: tenants asking for less than an equal split get what they ask; the rest split the remainder."""
    fair: dict[str, float] = {}
    remaining, pending = total, sorted(demands, key=lambda tenant: demands[tenant])
    while pending:
        share = remaining / len(pending)
        if demands[pending[0]] > share:
            fair.update(dict.fromkeys(pending, share))
            break
        tenant = pending.pop(0)
        fair[tenant] = demands[tenant]
        remaining -= demands[tenant]
    return fair


def jain(values: Sequence[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else float("nan")


def outcome(tally: Tally, load: Load, upstream_peak: int) -> Outcome:
    tenants = [NOISY, *load.quiet_tenants]
    total = sum(tally.completions[t] for t in tenants)
    demands = {NOISY: math.inf} | {t: load.quiet_rps * load.duration_s for t in load.quiet_tenants}
    fair = max_min_fair(total, demands)
    quiet_waits = sorted(w for t in load.quiet_tenants for w in tally.waits.get(t, []))
    noisy_waits = sorted(tally.waits.get(NOISY, []))
    return Outcome(
        shares={t: tally.completions[t] / total for t in tenants},
        fair_shares={t: fair[t] / total for t in tenants},
        jain=jain([tally.completions[t] / fair[t] for t in tenants]),
        quiet_p50_ms=percentile(quiet_waits, 50) * 1000,
        quiet_p99_ms=percentile(quiet_waits, 99) * 1000,
        noisy_p50_ms=percentile(noisy_waits, 50) * 1000,
        throughput_rps=total / load.duration_s,
        upstream_peak=upstream_peak,
    )


async def upstream_stats(session: aiohttp.ClientSession, base: str, *, reset: bool = False) -> dict[str, int]:
    request = session.post(f"{base}/stats/reset") if reset else session.get(f"{base}/stats")
    async with request as response:
        stats: dict[str, int] = await response.json()
        return stats


async def run_round(load: Load, base: str, redis_url: str, round_no: int) -> tuple[Outcome, Outcome, list[str]]:
    problems: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{base}/v1/chat/completions"
        await upstream_stats(session, base, reset=True)
        fifo_tally = await drive(fifo_gate(load.capacity), load, session, url)
        fifo = outcome(fifo_tally, load, (await upstream_stats(session, base))["peak"])

        client = aioredis.Redis.from_url(redis_url)
        deployment = f"bench-{uuid.uuid4().hex[:8]}"
        # A generous Redis timeout: on a busy 2-core box a slow reply must not turn into a fail-open.
        fail_opens: list[str] = []
        queue = FairQueue(client, deployment, load.capacity, timeout_s=2.0, on_fail_open=fail_opens.append)
        await upstream_stats(session, base, reset=True)
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(queue.listen())
            fair_tally = await drive(fair_gate(queue), load, session, url)
            listener.cancel()
        fair = outcome(fair_tally, load, (await upstream_stats(session, base))["peak"])
        left = await queue.queue_depth(), await client.zcard(deployment_keys(deployment)[4])
        if left != (0, 0):
            problems.append(f"round {round_no}: fair queue left {left[0]} entries and {left[1]} slots behind")
        if fail_opens:
            problems.append(f"round {round_no}: {len(fail_opens)} requests failed open (Redis too slow)")
        await client.aclose()
    for name, result in (("fifo", fifo), ("sluice", fair)):
        if result.upstream_peak > load.capacity:
            problems.append(f"round {round_no}: {name} let {result.upstream_peak} calls reach the upstream at once")
    return fifo, fair, problems


# --- the report -----------------------------------------------------------------------------------


def render(load: Load, rounds: list[tuple[Outcome, Outcome]]) -> str:
    def row(label: str, fair_text: str, pick: Callable[[Outcome], float], fmt: str, unit: str = "") -> list[str]:
        cells = [format(median([pick(r[i]) for r in rounds]), fmt) + unit for i in (0, 1)]
        return [label, fair_text, *cells]

    def share(tenant: str) -> Callable[[Outcome], float]:
        return lambda o: o.shares[tenant] * 100

    def fair_share(tenant: str) -> str:
        return format(median([r[1].fair_shares[tenant] * 100 for r in rounds]), ".1f") + " %"

    tenants = [NOISY, *load.quiet_tenants]
    rows = [row(f"share of completions: {t}", fair_share(t), share(t), ".1f", " %") for t in tenants]
    rows += [
        row("Jain's index (throughput / fair share)", "1.000", lambda o: o.jain, ".3f"),
        row("quiet tenants' queue wait p50 (ms)", "", lambda o: o.quiet_p50_ms, ".1f"),
        row("quiet tenants' queue wait p99 (ms)", "", lambda o: o.quiet_p99_ms, ".1f"),
        row("noisy tenant's queue wait p50 (ms)", "", lambda o: o.noisy_p50_ms, ".1f"),
        row("throughput (completions/s)", f"{load.capacity / load.latency_s:.1f}", lambda o: o.throughput_rps, ".1f"),
        row("upstream peak concurrency", f"≤ {load.capacity}", lambda o: o.upstream_peak, ".0f"),
    ]
    head = (
        f"capacity {load.capacity}, upstream latency {load.latency_s * 1000:.0f} ms; noisy: {load.noisy} concurrent; "
        f"{load.quiet} quiet tenants × {load.quiet_agents} agents, {load.quiet_rps:g} req/s each; "
        f"window {load.duration_s:g} s after {load.warmup_s:g} s warm-up; medians of {len(rounds)} rounds"
    )
    return head + "\n\n" + table(["", "fair (max-min)", "plain FIFO", "Sluice FairQueue"], rows)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--noisy", type=int, default=200, help="concurrent requests of the noisy tenant")
    parser.add_argument("--quiet", type=int, default=3, help="quiet tenants")
    parser.add_argument("--quiet-agents", type=int, default=2, help="sequential callers per quiet tenant")
    parser.add_argument("--quiet-rps", type=float, default=5.0, help="requests a second per quiet tenant")
    parser.add_argument("--warmup", type=float, default=2.0, help="s before the window, per gate and round")
    parser.add_argument("--duration", type=float, default=10.0, help="s measured, per gate and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    url = os.environ.get("SLUICE_BENCH_REDIS_URL")
    if url:
        yield url
        return
    servers = EmbeddedServers(workdir / "servers")
    # Only Valkey: the fair queue needs no Postgres, and initdb would add seconds to every run.
    try:
        yield servers.valkey.start()
    finally:
        servers.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.port, args.capacity, args.latency_ms / 1000))
        return 0
    load = Load(
        capacity=args.capacity,
        latency_s=args.latency_ms / 1000,
        noisy=args.noisy,
        quiet=args.quiet,
        quiet_agents=args.quiet_agents,
        quiet_rps=args.quiet_rps,
        warmup_s=args.warmup,
        duration_s=args.duration,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-fair-") as tmp, redis_server(Path(tmp)) as redis_url:
        port = free_port()
        command = [sys.executable, str(BENCH_DIR / "fairness.py"), "--serve-upstream", "--port", str(port)]
        command += ["--capacity", str(args.capacity), "--latency-ms", str(args.latency_ms)]
        upstream = Child("upstream", command, Path(tmp))
        try:
            wait_for_port(port, upstream.process)
            rounds: list[tuple[Outcome, Outcome]] = []
            problems: list[str] = []
            for round_no in range(1, args.rounds + 1):
                log(f"round {round_no}/{args.rounds}: plain FIFO, then FairQueue")
                fifo, fair, found = asyncio.run(run_round(load, f"http://127.0.0.1:{port}", redis_url, round_no))
                rounds.append((fifo, fair))
                problems += found
        finally:
            upstream.stop()
    print(render(load, rounds), flush=True)
    for problem in problems:
        log(f"check failed: {problem}")
    log(f"total wall time {time.monotonic() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
