"""Drive Debian's `wrk` with a Lua script that POSTs a chat body and reports exact figures.

The script's `done()` hook prints one `BENCH key=value …` line with the request count, the run's
duration and the latency percentiles in microseconds (the same numbers `--latency` prints, without
its rounding), and the error counters; `errors.status` is what wrk prints as "Non-2xx or 3xx responses".
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import msgspec

_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {authorization}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f mean_us=%.1f " ..
    "non2xx=%d connect=%d read=%d write=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: int
    """connect + read + write + timeout errors."""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def _lua_string(value: str) -> str:
    # A JSON string literal is a valid Lua string literal for the ASCII we send.
    return msgspec.json.encode(value).decode()


def write_script(path: Path, body: bytes, api_key: str) -> Path:
    path.write_text(_LUA.format(body=_lua_string(body.decode()), authorization=_lua_string(f"Bearer {api_key}")))
    return path


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk not found: `apt-get install -y wrk` (Debian/Ubuntu)")
    return found


def run_wrk(
    url: str, script: Path, *, connections: int, duration_s: int, core: int | None, threads: int = 1
) -> WrkResult:
    """One wrk run of `duration_s` seconds with `connections` keep-alive connections."""
    command = [
        require_wrk(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration_s}s",
        "--timeout", "10s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse(done.stdout)


def parse(output: str) -> WrkResult:
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{output}")
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return WrkResult(
        requests=int(fields["requests"]),
        duration_s=int(fields["duration_us"]) / 1e6,
        p50_ms=float(fields["p50_us"]) / 1e3,
        p90_ms=float(fields["p90_us"]) / 1e3,
        p99_ms=float(fields["p99_us"]) / 1e3,
        mean_ms=float(fields["mean_us"]) / 1e3,
        non_2xx=int(fields["non2xx"]),
        socket_errors=sum(int(fields[k]) for k in ("connect", "read", "write", "timeout")),
    )
