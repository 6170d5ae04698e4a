"""The system under test for bench/overhead.py: Postgres and Redis, the fake upstream and one `sluice serve`.

Everything started here is registered on the caller's ExitStack and stopped in reverse order.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from benchkit import BENCH_DIR, Child, free_port, log, pinned, wait_for_port

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


def services_label(load_core: int) -> str:
    """Where Postgres and Redis came from, for the report."""
    parts = [
        f"{name} {'external' if os.environ.get(var) else f'embedded on core {load_core}'}"
        for name, var in (("Postgres", "SLUICE_BENCH_DATABASE_URL"), ("Redis", "SLUICE_BENCH_REDIS_URL"))
    ]
    return ", ".join(parts)


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
