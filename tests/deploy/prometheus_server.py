"""A real Prometheus server (Debian's package) on loopback, scraping and evaluating Sluice's rules every
second, for tests that check what an operator's Prometheus would see."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.promql import RULES
from tests.deploy.tools import binary
from tests.processes import free_port


class PrometheusServer:
    def __init__(self, base: str) -> None:
        self.base = base
        self._client = httpx.AsyncClient(base_url=base, timeout=10)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; fails the test when Prometheus rejects the expression."""
        response = await self._client.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"] if body["data"]["resultType"] == "vector" else []
        return result

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def alert_states(self) -> dict[str, str]:
        body = (await self._client.get("/api/v1/alerts")).json()
        return {alert["labels"]["alertname"]: alert["state"] for alert in body["data"]["alerts"]}

    async def rules_evaluated(self) -> bool:
        body = (await self._client.get("/api/v1/rules")).json()
        groups = body["data"]["groups"]
        return bool(groups) and all(group["lastEvaluation"] != "0001-01-01T00:00:00Z" for group in groups)

    async def wait_for(self, expr: str, expected: float, timeout_s: float = 30.0) -> float | None:
        """Poll until `expr` equals `expected` (scrapes land every second); return the last value seen."""
        deadline = time.monotonic() + timeout_s
        value = await self.value(expr)
        while value != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            value = await self.value(expr)
        return value

    async def aclose(self) -> None:
        await self._client.aclose()


@contextlib.asynccontextmanager
async def prometheus_scraping(workdir: Path, target: str) -> AsyncIterator[PrometheusServer]:
    """Prometheus scraping `target` (host:port) and evaluating deploy/prometheus/sluice.rules.yml, each every 1 s."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: sluice
    static_configs:
      - targets: ["{target}"]
"""
    )
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if (await server._client.get("/-/ready")).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus did not become ready in 60 s"
            await asyncio.sleep(0.2)
        yield server
    finally:
        await server.aclose()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
