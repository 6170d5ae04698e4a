"""Test harness: a real gateway (create_app + uvicorn) on an ephemeral port, and admin helpers.

The gateway runs in-process on the test's event loop, over real HTTP, against the test's own
Postgres database and Redis index; only the upstream is fake (tests/fakes/upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import msgspec
import uvicorn

from gateway.app import create_app
from gateway.settings import FileConfig, Settings

ADMIN_TOKEN = "test-admin-token-0123456789"
PEPPER = "1:test-pepper-abcdef"
UPSTREAM_KEY = "sk-upstream-provider-secret-42"

FAKE_SCENARIOS = (
    "fake-ok", "fake-tools", "fake-logprobs", "fake-500", "fake-503", "fake-429", "fake-400", "fake-401",
    "fake-slow", "fake-html", "fake-garbled", "fake-huge", "fake-redirect", "fake-broken-stream",
    "fake-error-stream", "fake-stall-stream", "fake-no-usage-stream", "fake-long-line", "fake-crlf",
    "fake-usage-1000-500", "fake-invalid-json-stream", "fake-reset-stream", "fake-agent",
)  # fmt: skip


def config_toml(fake_base_url: str | None = None, *, timeouts: str = "", extra: str = "") -> str:
    """The simulator models `small`/`large`, plus one model per fake-upstream scenario when a fake is given."""
    parts = [
        """
[[deployments]]
kind = "simulator"
name = "sim-small"
model = "small"
[[deployments]]
kind = "simulator"
name = "sim-large"
model = "large"
[[models]]
name = "small"
route = { policy = "fixed", deployment = "sim-small" }
[[models]]
name = "large"
route = { policy = "fixed", deployment = "sim-large" }
[prices.sim-small]
input = 0.15
output = 0.60
[prices.sim-large]
input = 3.00
output = 12.00
"""
    ]
    if fake_base_url is not None:
        for name in FAKE_SCENARIOS:
            parts.append(f"""
[[deployments]]
kind = "openai"
name = "{name}"
base_url = "{fake_base_url}"
model = "{name}"
api_key_env = "TEST_UPSTREAM_KEY"
{timeouts or "timeouts = { connect_s = 2, first_byte_s = 2, idle_s = 2 }"}
[[models]]
name = "{name}"
route = {{ policy = "fixed", deployment = "{name}" }}
[prices.{name}]
input = 1.00
output = 2.00
cached_input = 0.5
""")
    parts.append(extra)
    return "\n".join(parts)


def file_config(fake_base_url: str | None = None, **kwargs: Any) -> FileConfig:
    return msgspec.toml.decode(config_toml(fake_base_url, **kwargs).encode(), type=FileConfig)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The test process owns its signals; several in-process gateways must not fight over them.
        yield


class Gateway:
    """A running gateway: `base_url` (…/v1), an admin client and helpers to make tenants and keys."""

    def __init__(self, base: str, app: Any) -> None:
        self.base = base
        self.base_url = f"{base}/v1"
        self.app = app
        self.admin = httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def create_tenant(self, name: str = "acme", **quota: Any) -> dict[str, Any]:
        response = await self.admin.post("/admin/tenants", json={"name": name, "quota": quota})
        assert response.status_code == 201, response.text
        tenant: dict[str, Any] = response.json()
        return tenant

    async def create_key(self, tenant_id: str) -> dict[str, Any]:
        response = await self.admin.post(f"/admin/tenants/{tenant_id}/keys", json={})
        assert response.status_code == 201, response.text
        key: dict[str, Any] = response.json()
        return key

    async def tenant_key(self, name: str = "acme", **quota: Any) -> tuple[str, str]:
        """A new tenant and one key for it: (tenant id, plaintext key)."""
        tenant = await self.create_tenant(name, **quota)
        key = await self.create_key(tenant["id"])
        return tenant["id"], key["key"]

    async def flush_ledger(self) -> None:
        assert await self.runtime.ledger.flush()


@contextlib.asynccontextmanager
async def running_gateway(
    database_url: str,
    redis_url: str,
    config: FileConfig,
    *,
    environ: Mapping[str, str] | None = None,
    span_exporter: Any = None,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "admin_token": ADMIN_TOKEN,
        "key_pepper": PEPPER,
        "ledger_flush_interval_s": 0.05,
    }
    values.update(settings)
    app = create_app(
        Settings(**values), config, environ or {"TEST_UPSTREAM_KEY": UPSTREAM_KEY}, span_exporter=span_exporter
    )
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so (else 40 ms Nagle stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(
            app, lifespan="on", log_level="warning", access_log=False, timeout_keep_alive=5, timeout_graceful_shutdown=5
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        gateway = Gateway(f"http://127.0.0.1:{port}", app)
        try:
            yield gateway
        finally:
            await gateway.admin.aclose()
    finally:
        server.should_exit = True
        await task
        sock.close()
