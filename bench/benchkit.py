"""Shared benchmark plumbing: pinned child processes, ports, RSS sampling, medians and table printing.

Nothing here measures anything by itself; `overhead.py` and `upstream_clients.py` do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`, or fail if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(command: Sequence[str], core: int | None) -> list[str]:
    """`command` run under `taskset -c core` (unpinned when `core` is None)."""
    if core is None:
        return list(command)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); it pins each process to its core")
    return ["taskset", "-c", str(core), *command]


def pin_tree(pid: int, core: int) -> None:
    """Pin a running process and its current children to `core` (children forked later inherit it)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.cpu_affinity([core])


class Child:
    """A child process whose output goes to a file; `stop()` sends SIGTERM, then SIGKILL after a grace."""

    def __init__(self, name: str, command: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            list(command), stdout=self._log, stderr=subprocess.STDOUT, env=dict(env or os.environ), cwd=REPO_DIR
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class PeakRss:
    """Samples the resident memory of a process tree in a background thread; `peak_bytes` is the maximum
    seen of the tree's total (the process plus all its children at that instant)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_bytes = 0
        self.peak_processes = 0

    def _sample(self) -> None:
        procs = [self._root, *self._root.children(recursive=True)]
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(procs)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._sample()
            self._stop.wait(self._interval_s)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[PeakRss]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class OtherLoad:
    """How busy the rest of the machine was while we measured: system-wide busy CPU time minus that of this
    process and its descendants (live ones via psutil, finished ones via `os.times()`), per second of wall time."""

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
        own = os.times()
        ours = own.user + own.system + own.children_user + own.children_system
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                cpu = proc.cpu_times()
                ours += cpu.user + cpu.system
        return time.monotonic(), busy, ours

    def cpus(self) -> float:
        """Average number of CPUs the rest of the machine kept busy since this object was made."""
        start_t, start_busy, start_ours = self._start
        end_t, end_busy, end_ours = self._snapshot()
        elapsed = end_t - start_t
        return max(0.0, (end_busy - start_busy) - (end_ours - start_ours)) / elapsed if elapsed > 0 else 0.0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A plain-text table: the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.3f}×" if abs(value) < 0.1 else f"{value:.2f}×"
