"""RELIABILITY T26, the log part: with `log_statement = all`, hostile input never appears inside SQL text,
only as bound parameters (every statement the gateway sends is parameterised)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from gateway.embedded import EmbeddedPostgres
from gateway.migrations import upgrade
from tests.harness import ADMIN_TOKEN, file_config, running_gateway

HOSTILE = ["' OR '1'='1", "x'); DROP TABLE tenants;--", 'quote " and \\ backslash', "ünïcödé ' ☃"]


@pytest.fixture(name="logged_postgres")
def fx_logged_postgres() -> Iterator[tuple[str, Path]]:
    path = Path(tempfile.mkdtemp(prefix="sluice-sqllog-"))
    server = EmbeddedPostgres(path / "postgres", ephemeral=True)
    try:
        url = server.start()
        upgrade(url)
        yield url, server.log_path
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


async def test_hostile_input_reaches_postgres_only_as_bound_parameters(
    logged_postgres: tuple[str, Path], redis_url: str
) -> None:
    url, log_path = logged_postgres
    admin_headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    conn = await asyncpg.connect(url)
    await conn.execute("ALTER SYSTEM SET log_statement = 'all'")
    await conn.execute("SELECT pg_reload_conf()")
    await conn.close()
    async with running_gateway(url, redis_url, file_config()) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base, headers=admin_headers, timeout=30) as admin:
            for name in HOSTILE:
                created = await admin.post("/admin/tenants", json={"name": name})
                assert created.status_code == 201 and created.json()["name"] == name
                tenant_id = created.json()["id"]
                assert (await admin.get(f"/admin/tenants/{tenant_id}/usage", params={"since": name})).status_code == 400
            assert (await admin.get(f"/admin/tenants/{HOSTILE[0]}")).status_code == 404
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
            for name in (value for value in HOSTILE if value.isascii()):  # headers are latin-1 on the wire
                token = f"sk-sluice-{name}_{'A' * 49}"
                response = await client.post(
                    "/chat/completions", json={"model": "small", "messages": [{"role": "user", "content": name}]},
                    headers={"authorization": f"Bearer {token}"},
                )  # fmt: skip
                assert response.status_code == 401
    log = log_path.read_text(errors="replace")
    statements = [line for line in log.splitlines() if "statement: " in line or "execute " in line]
    assert statements, "the server logged the statements it ran"
    for value in HOSTILE:
        leaked = [line for line in statements if value in line]
        assert not leaked, f"{value!r} appeared inside SQL text: {leaked[:2]}"
    assert any("$1" in line for line in statements), "statements are parameterised"
