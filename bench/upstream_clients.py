"""Which async HTTP client to call upstreams with: aiohttp vs httpx (default and with pool limits tuned).

bench/fake_upstream.py runs in its own process on one core; each measurement is a fresh client process on
another core (uvloop, as in the gateway) that POSTs a small chat body N times with C tasks in flight over
one pooled client, reading and JSON-decoding every response fully. Rounds interleave the clients, and the
report quotes medians over rounds, with req/s as a ratio against aiohttp measured in the same round.

    python bench/upstream_clients.py                          # c = 1, 64, 256; 6,000 requests; 3 rounds
    python bench/upstream_clients.py --requests 3000 --rounds 5 --concurrency 1,64

The decision it supports is written up in docs/upstream-client.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import msgspec
from benchkit import (
    BENCH_DIR,
    Child,
    OtherLoad,
    cpu_count,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    free_port,
    log,
    median,
    percentile,
    pinned,
    table,
    wait_for_port,
)

CLIENTS = ("aiohttp", "httpx", "httpx-tuned")
"""aiohttp as the gateway configures it; httpx with its defaults (100 connections, 20 kept alive);
httpx with the pool sized like aiohttp's (256 connections, all kept alive)."""
POOL_SIZE = 256
"""The gateway's default `max_concurrency` per deployment, used as the connection limit."""
BODY = msgspec.json.encode(
    {"model": "bench-upstream", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-upstream"}


class Result(msgspec.Struct, frozen=True):
    client: str
    concurrency: int
    requests: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --- the client process ---------------------------------------------------------------------------

Send = Callable[[], Awaitable[bool]]
"""One request; True when it was a 200 with a JSON object body."""


async def _drive(send: Send, concurrency: int, total: int, max_s: float) -> tuple[float, list[float], int]:
    """`total` requests (or as many as `max_s` allows) with `concurrency` tasks in flight:
    (elapsed s, sorted latencies s of the completed requests, errors)."""
    remaining = total
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + max_s

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            started = time.perf_counter()
            ok = await send()
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, sorted(latencies), errors


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(msgspec.json.decode(body), dict)
    except msgspec.DecodeError:
        return False


@contextlib.asynccontextmanager
async def _aiohttp_send(url: str) -> AsyncIterator[Send]:
    import aiohttp

    # As gateway/providers/http_transport.py configures its per-deployment session.
    connector = aiohttp.TCPConnector(limit=POOL_SIZE, ttl_dns_cache=300, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send() -> bool:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                body = await resp.read()
                return resp.status == 200 and _is_object(body)

        yield send


@contextlib.asynccontextmanager
async def _httpx_send(url: str, *, tuned: bool) -> AsyncIterator[Send]:
    import httpx

    limits = (
        httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE, keepalive_expiry=30)
        if tuned
        else httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults, spelled out
    )
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30, connect=5)) as client:

        async def send() -> bool:
            resp = await client.post(url, content=BODY, headers=HEADERS)
            return resp.status_code == 200 and _is_object(resp.content)

        yield send


def _client(name: str, url: str) -> contextlib.AbstractAsyncContextManager[Send]:
    if name == "aiohttp":
        return _aiohttp_send(url)
    return _httpx_send(url, tuned=name == "httpx-tuned")


async def measure_one(name: str, url: str, concurrency: int, total: int, warmup: int, max_s: float) -> Result:
    async with _client(name, url) as send:
        await _drive(send, concurrency, warmup, max_s)
        elapsed, latencies, errors = await _drive(send, concurrency, total, max_s)
    return Result(
        client=name,
        concurrency=concurrency,
        requests=len(latencies),
        elapsed_s=elapsed,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        errors=errors,
    )


def worker_main(args: argparse.Namespace) -> None:
    import uvloop

    result = uvloop.run(
        measure_one(args.worker, args.url, args.concurrency[0], args.requests, args.warmup, args.max_seconds)
    )
    sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")


# --- the coordinating process -----------------------------------------------------------------------


def run_worker(name: str, url: str, concurrency: int, args: argparse.Namespace) -> Result:
    command = pinned(
        [
            sys.executable, str(Path(__file__).resolve()), "--worker", name, "--url", url,
            "--concurrency", str(concurrency), "--requests", str(args.requests), "--warmup", str(args.warmup),
            "--max-seconds", str(args.max_seconds),
        ],
        args.client_core,
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{name} c={concurrency} failed:\n{done.stderr.decode(errors='replace')}")
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=Result)


@dataclass(frozen=True, slots=True)
class Cell:
    """Medians over rounds for one client at one concurrency."""

    rps: float
    ratio: float
    p50_ms: float
    p99_ms: float
    errors: int


def summarize(results: list[tuple[int, Result]], name: str, concurrency: int) -> Cell:
    rounds = sorted({r for r, _ in results})
    mine = {r: res for r, res in results if res.client == name and res.concurrency == concurrency}
    base = {r: res for r, res in results if res.client == "aiohttp" and res.concurrency == concurrency}
    ratios = [mine[r].rps / base[r].rps for r in rounds if r in mine and r in base and base[r].rps > 0]
    return Cell(
        rps=median([res.rps for res in mine.values()]),
        ratio=median(ratios),
        p50_ms=median([res.p50_ms for res in mine.values()]),
        p99_ms=median([res.p99_ms for res in mine.values()]),
        errors=sum(res.errors for res in mine.values()),
    )


def render(results: list[tuple[int, Result]], args: argparse.Namespace, other_cpus: float) -> str:
    rows = []
    for conc in args.concurrency:
        for name in args.clients:
            cell = summarize(results, name, conc)
            rows.append(
                [str(conc), name, fmt_int(cell.rps), fmt_ratio(cell.ratio), fmt_ms(cell.p50_ms), fmt_ms(cell.p99_ms),
                 str(cell.errors)]
            )  # fmt: skip
    versions = ", ".join(f"{pkg} {version(pkg)}" for pkg in ("aiohttp", "httpx", "httpcore", "uvloop"))
    return "\n".join(
        [
            "Upstream HTTP client: POST a small chat body, read and decode the JSON answer, one pooled client",
            f"fake upstream (bench/fake_upstream.py) on core {args.upstream_core}; client process (uvloop) on core "
            f"{args.client_core}; {args.requests:,} requests per run (at most {args.max_seconds:g} s) after "
            f"{args.warmup:,} warm-up; "
            f"{args.rounds} rounds interleaved; medians over rounds; × = req/s ratio to aiohttp in the same round",
            f"Python {sys.version.split()[0]}; {versions}",
            f"other processes kept {other_cpus:.2f} of {args.cpus} CPUs busy on average during the runs",
            "",
            table(["conc", "client", "req/s", "× aiohttp", "p50 ms", "p99 ms", "errors"], rows, left=2),
        ]
    )


def coordinate(args: argparse.Namespace) -> None:
    started = time.monotonic()
    results: list[tuple[int, Result]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-clients-") as tmp:
        port = free_port()
        command = pinned([sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", str(port)], args.upstream_core)
        upstream = Child("fake-upstream", command, Path(tmp))
        try:
            wait_for_port(port, upstream.process)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            other_load = OtherLoad()
            for round_no in range(1, args.rounds + 1):
                for conc in args.concurrency:
                    for name in args.clients:
                        result = run_worker(name, url, conc, args)
                        results.append((round_no, result))
                        log(
                            f"round {round_no}/{args.rounds} c={conc:<3} {name:<11} {result.rps:>8,.0f} req/s  "
                            f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  errors {result.errors}"
                        )
            other_cpus = other_load.cpus()
        finally:
            upstream.stop()
    print(render(results, args, other_cpus), flush=True)
    log(f"total wall time {time.monotonic() - started:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = cpu_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per measured run (default 6000)")
    parser.add_argument("--warmup", type=int, default=300, help="requests before measuring (default 300)")
    parser.add_argument(
        "--max-seconds", type=float, default=15.0, help="stop a run (and its warm-up) after this long (default 15)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeated rounds; medians are quoted (default 3)")
    parser.add_argument("--concurrency", default="1,64,256", help="comma-separated in-flight counts (default 1,64,256)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"subset of {','.join(CLIENTS)}")
    parser.add_argument("--client-core", type=int, default=0)
    parser.add_argument("--upstream-core", type=int, default=1 % cpus)
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cpus = cpus
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.clients = [c for c in str(args.clients).split(",") if c.strip()]
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    if "aiohttp" not in args.clients:
        args.clients.insert(0, "aiohttp")  # the baseline every ratio is taken against
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
    else:
        coordinate(args)


if __name__ == "__main__":
    main()
