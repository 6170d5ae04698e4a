"""The printed report of bench/overhead.py: medians over rounds, per-round side-by-side ratios, targets, peers.

Ratios and added latency are computed inside each round (the direct and gateway runs of one round ran back to
back) and the median of those is quoted, so slow drifts of a shared machine cancel out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchkit import fmt_int, fmt_ms, fmt_ratio, median, table
from wrkload import WrkResult

TARGET_ADDED_P50_MS = 1.0
"""Issue target: at most this much added at p50 at concurrency 1."""
TARGET_RPS = 1_500
"""Issue target: at least this many requests/s through one gateway worker at concurrency 64."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    added_ms: float
    rps: float


PEERS = (
    Peer("nginx hop", 0.17, 14_000),
    Peer("Portkey gateway", 1.2, 790),
    Peer("LiteLLM proxy (default config, 1 worker)", 10.0, 95),
)
"""The issue's figures, measured the same way on this kind of machine (not in this run)."""


@dataclass(frozen=True, slots=True)
class Run:
    round_no: int
    target: str
    """`direct` or `gateway`."""
    concurrency: int
    result: WrkResult
    gateway_cpu_s: float
    """CPU seconds the gateway process used during this run (gateway runs only)."""
    stage_p50_ms: dict[str, float]
    """p50 of each stage the gateway timed itself (auth, decode, route, admit, upstream) and `handler` (all of
    them), from its per-request log lines (gateway runs at log level INFO only)."""


@dataclass(frozen=True, slots=True)
class Measurements:
    runs: list[Run]
    duration_s: int
    rounds: int
    placement: tuple[int, int, int]
    """(gateway core, upstream core, load core)."""
    log_level: str
    rpm_limit: int
    peak_rss_bytes: int
    peak_rss_processes: int
    smoke_cost: str
    warmup_requests: int
    ledger_records: int
    ledger_cost_usd: float
    gateway_outcomes: dict[str, int]
    fail_open: int
    """Admissions decided by the local fallback (Redis too slow): the RPM check must have run on Redis."""
    auth_failures: int
    other_cpus: float
    """CPUs the rest of the machine kept busy on average during the measured rounds."""
    cpus: int
    services: str
    """Where Postgres and Redis came from."""

    @property
    def concurrencies(self) -> list[int]:
        return sorted({run.concurrency for run in self.runs})

    @property
    def non_2xx(self) -> int:
        return sum(run.result.non_2xx for run in self.runs)

    @property
    def socket_errors(self) -> int:
        return sum(run.result.socket_errors for run in self.runs)

    @property
    def ledger_ok(self) -> bool:
        """One usage record per charged (ok) request."""
        return self.ledger_records > 0 and self.ledger_records == self.gateway_outcomes.get("ok", 0)

    @property
    def healthy(self) -> bool:
        only_ok = set(self.gateway_outcomes) <= {"ok"}
        return self.non_2xx == 0 and self.ledger_ok and only_ok and self.auth_failures == 0

    def pairs(self, concurrency: int) -> list[tuple[WrkResult, WrkResult, float]]:
        """(direct, gateway, gateway CPU s) per round for one concurrency."""
        by_round: dict[int, dict[str, Run]] = {}
        for run in self.runs:
            if run.concurrency == concurrency:
                by_round.setdefault(run.round_no, {})[run.target] = run
        return [
            (r["direct"].result, r["gateway"].result, r["gateway"].gateway_cpu_s)
            for _, r in sorted(by_round.items())
            if {"direct", "gateway"} <= r.keys()
        ]


@dataclass(frozen=True, slots=True)
class Row:
    """Medians over rounds for one concurrency."""

    concurrency: int
    direct_rps: float
    gateway_rps: float
    rps_ratio: float
    direct_p50: float
    gateway_p50: float
    added_p50: float
    p50_ratio: float
    direct_p99: float
    gateway_p99: float
    added_p99: float
    p99_ratio: float
    cpu_us_per_request: float


def _med(pairs: list[tuple[WrkResult, WrkResult, float]], fn: Callable[[WrkResult, WrkResult, float], float]) -> float:
    return median([fn(d, g, c) for d, g, c in pairs])


def summarize(m: Measurements, concurrency: int) -> Row:
    p = m.pairs(concurrency)
    return Row(
        concurrency=concurrency,
        direct_rps=_med(p, lambda d, g, c: d.rps),
        gateway_rps=_med(p, lambda d, g, c: g.rps),
        rps_ratio=_med(p, lambda d, g, c: g.rps / d.rps),
        direct_p50=_med(p, lambda d, g, c: d.p50_ms),
        gateway_p50=_med(p, lambda d, g, c: g.p50_ms),
        added_p50=_med(p, lambda d, g, c: g.p50_ms - d.p50_ms),
        p50_ratio=_med(p, lambda d, g, c: g.p50_ms / d.p50_ms),
        direct_p99=_med(p, lambda d, g, c: d.p99_ms),
        gateway_p99=_med(p, lambda d, g, c: g.p99_ms),
        added_p99=_med(p, lambda d, g, c: g.p99_ms - d.p99_ms),
        p99_ratio=_med(p, lambda d, g, c: g.p99_ms / d.p99_ms),
        cpu_us_per_request=_med(p, lambda d, g, c: c / g.requests * 1e6 if g.requests else float("nan")),
    )


def _throughput_table(rows: list[Row]) -> str:
    return table(
        ["conc", "direct req/s", "gateway req/s", "gateway/direct", "gateway CPU µs/req", "gateway req/CPU-s"],
        [
            [str(r.concurrency), fmt_int(r.direct_rps), fmt_int(r.gateway_rps), fmt_ratio(r.rps_ratio),
             fmt_int(r.cpu_us_per_request), fmt_int(1e6 / r.cpu_us_per_request if r.cpu_us_per_request else 0)]
            for r in rows
        ],
    )  # fmt: skip


def _latency_table(rows: list[Row]) -> str:
    return table(
        ["conc", "direct p50", "gateway p50", "added p50", "p50 ×", "direct p99", "gateway p99", "added p99", "p99 ×"],
        [
            [str(r.concurrency), fmt_ms(r.direct_p50, 3), fmt_ms(r.gateway_p50, 3), fmt_ms(r.added_p50, 3),
             fmt_ratio(r.p50_ratio), fmt_ms(r.direct_p99, 3), fmt_ms(r.gateway_p99, 3), fmt_ms(r.added_p99, 3),
             fmt_ratio(r.p99_ratio)]
            for r in rows
        ],
    )  # fmt: skip


def _stage_names(m: Measurements) -> list[str]:
    """The stages the gateway timed, in the order they first appear (whatever the gateway logs today)."""
    names: dict[str, None] = {}
    for run in m.runs:
        for stage in run.stage_p50_ms:
            if stage != "handler":
                names.setdefault(stage)
    return list(names)


def _stages_table(m: Measurements) -> str | None:
    """Where the gateway's time goes, from its own stage timings; None when the log had none."""
    stages = _stage_names(m)
    rows = []
    for conc in m.concurrencies:
        runs = [r for r in m.runs if r.target == "gateway" and r.concurrency == conc and r.stage_p50_ms]
        if not runs or not stages:
            return None
        cells = [median([r.stage_p50_ms.get(stage, 0.0) for r in runs]) for stage in (*stages, "handler")]
        outside = median([r.result.p50_ms - r.stage_p50_ms["handler"] for r in runs])
        rows.append([str(conc), *(fmt_ms(c, 3) for c in cells), fmt_ms(outside, 3)])
    return table(["conc", *stages, "in handler", "outside"], rows)


def _factor(ours: float, theirs: float, *, higher_is_better: bool) -> str:
    if ours <= 0 or theirs <= 0:
        return "n/a"
    factor = ours / theirs if higher_is_better else theirs / ours
    return f"{factor:.1f}× faster than" if factor >= 1 else f"{1 / factor:.1f}× slower than"


def _verdicts(rows: dict[int, Row]) -> list[str]:
    lines = ["targets (issue):"]
    if 1 in rows:
        added = rows[1].added_p50
        ok = "PASS" if added <= TARGET_ADDED_P50_MS else "MISS"
        lines.append(f"  added p50 at c=1   {added:.3f} ms   target ≤ {TARGET_ADDED_P50_MS:.1f} ms   {ok}")
    if 64 in rows:
        rps = rows[64].gateway_rps
        ok = "PASS" if rps >= TARGET_RPS else "MISS"
        lines.append(f"  req/s at c=64      {rps:,.0f}   target ≥ {TARGET_RPS:,}   {ok}")
    lines.append("peers (the issue's figures, measured elsewhere the same way, not in this run):")
    for peer in PEERS:
        parts = []
        if 64 in rows:
            verdict = _factor(rows[64].gateway_rps, peer.rps, higher_is_better=True)
            parts.append(f"req/s at c=64: {verdict} {peer.name} ({peer.rps:,.0f})")
        if 1 in rows:
            verdict = _factor(rows[1].added_p50, peer.added_ms, higher_is_better=False)
            parts.append(f"added p50 at c=1: {verdict} {peer.name} (+{peer.added_ms:g} ms)")
        lines.extend(f"  {part}" for part in parts)
    return lines


def _checks(m: Measurements) -> list[str]:
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(m.gateway_outcomes.items())) or "none"
    caught_up = "yes" if m.ledger_ok else "NO"
    measured = sum(run.result.requests for run in m.runs if run.target == "gateway")
    return [
        "checks:",
        f"  non-2xx responses (wrk, all runs): {m.non_2xx}; socket errors: {m.socket_errors}",
        f"  gateway outcomes (sluice_requests_total, bench tenant): {outcomes}; auth failures: {m.auth_failures}",
        f"  RPM check on Redis for all but {m.fail_open:,} requests (sluice_quota_fail_open: Redis slower than the "
        "admission timeout, decided locally)",
        f"  wrk completed through the gateway: {measured:,} measured + {m.warmup_requests:,} warm-up (+1 smoke test)",
        f"  ledger: {m.ledger_records:,} usage_records for {m.gateway_outcomes.get('ok', 0):,} ok gateway requests, "
        f"caught up: {caught_up}; cost ${m.ledger_cost_usd:.6f} (smoke call ${m.smoke_cost})",
    ]


def _stage_section(m: Measurements) -> list[str]:
    stages = _stages_table(m)
    if stages is None:
        return []
    return [
        "",
        "where the gateway's time goes: p50 ms of its own stage timings (request log); in handler = its duration_ms;"
        " outside = wrk's gateway p50 − in-handler p50 (HTTP server, framework, response, event-loop wake-ups);"
        " above c=1 every stage also includes waiting for the busy event loop",
        stages,
    ]


def render(m: Measurements) -> str:
    rows = {c: summarize(m, c) for c in m.concurrencies}
    gateway_core, upstream_core, load_core = m.placement
    header = [
        "Sluice gateway overhead: wrk → fake upstream (direct) vs wrk → sluice serve → fake upstream (gateway)",
        f"1 gateway worker on core {gateway_core}; fake upstream on core {upstream_core}; wrk (1 thread) on core "
        f"{load_core}; {m.services}",
        f"auth + RPM check (rpm={m.rpm_limit:,}) + metrics + ledger on; gateway log level {m.log_level}",
        f"{m.duration_s} s per run, {m.rounds} rounds interleaved direct/gateway; medians over rounds "
        "(ratios and added ms taken per round, then the median)",
    ]
    ordered = [rows[c] for c in m.concurrencies]
    noise = (
        f"machine: {m.cpus} CPUs; other processes kept {m.other_cpus:.2f} CPUs busy on average during the rounds"
        + (" (noisy: compare ratios, not absolute figures)" if m.other_cpus > 0.1 else "")
    )
    rss = f"gateway peak RSS: {m.peak_rss_bytes / 2**20:,.1f} MiB ({m.peak_rss_processes} process(es), sampled 10/s)"
    return "\n".join(
        [
            *header,
            "",
            "throughput (req/s; req/CPU-s = gateway requests per second of its own CPU time, what its core serves"
            " when the gateway is the bottleneck, and less sensitive to other load than req/s)",
            _throughput_table(ordered),
            "",
            "latency (ms)",
            _latency_table(ordered),
            *_stage_section(m),
            "",
            rss,
            noise,
            "",
            *_verdicts(rows),
            "",
            *_checks(m),
        ]
    )
