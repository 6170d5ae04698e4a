"""The embedded PostgreSQL + Valkey pair, the migration, and the per-test isolation the suite relies on."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio

from gateway.embedded import EmbeddedServerError, EmbeddedServers
from gateway.migrations import upgrade
from tests.servers import Servers, fresh_database, redis_db_index


@pytest.fixture(name="data_dir")
def fx_data_dir() -> Iterator[Path]:
    # Outside pytest's tmp_path for the reason given in tests/servers.py.
    with tempfile.TemporaryDirectory(prefix="sluice-embedded-", ignore_cleanup_errors=True) as path:
        yield Path(path)


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_working_in(directory: Path) -> list[int]:
    """Pids whose working directory is inside `directory` (both servers run in their data dirs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = (proc / "cwd").readlink()
        except OSError:
            continue
        if cwd.is_relative_to(directory.resolve()):
            pids.append(int(proc.name))
    return pids


def _port_open(url: str) -> bool:
    port = urlsplit(url).port
    assert port is not None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


async def _select_one(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        value: int = await connection.fetchval("SELECT 1")
        return value
    finally:
        await connection.close()


async def _ping(redis_url: str) -> bool:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_embedded_servers_answer_sql_and_redis_and_stop_ends_their_processes(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir, ephemeral=True)
    started = time.monotonic()
    urls = await asyncio.to_thread(servers.start)
    startup_s = time.monotonic() - started
    try:
        assert urls.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert urls.redis_url.startswith("redis://127.0.0.1:")
        assert await _select_one(urls.database_url) == 1
        assert await _ping(urls.redis_url)
        postgres_pid = _pid(data_dir / "postgres" / "postmaster.pid")
        valkey_pid = _pid(data_dir / "valkey" / "server.pid")
        assert {postgres_pid, valkey_pid} <= set(_processes_working_in(data_dir))
    finally:
        await asyncio.to_thread(servers.stop)

    assert not _is_running(postgres_pid)
    assert not _is_running(valkey_pid)
    assert _processes_working_in(data_dir) == []
    assert not _port_open(urls.database_url)
    assert not _port_open(urls.redis_url)
    assert startup_s < 30, f"embedded pair took {startup_s:.1f} s to start"


async def test_second_embedded_servers_on_a_data_dir_reuses_the_running_pair_and_leaves_it_running(
    data_dir: Path,
) -> None:
    """Two `sluice serve` processes sharing a data dir: the second uses the first one's servers."""
    first = EmbeddedServers(data_dir, ephemeral=True)
    urls = await asyncio.to_thread(first.start)
    try:
        second = EmbeddedServers(data_dir)
        assert await asyncio.to_thread(second.start) == urls
        await asyncio.to_thread(second.stop)

        assert await _select_one(urls.database_url) == 1
        assert await _ping(urls.redis_url)
    finally:
        await asyncio.to_thread(first.stop)


async def test_embedded_servers_start_over_pid_files_left_by_a_killed_run(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir, ephemeral=True)
    await asyncio.to_thread(servers.start)
    await asyncio.to_thread(servers.stop)
    # What a SIGKILLed run leaves behind: pid files naming processes that no longer exist.
    dead = 2**22 + 1  # above the default pid_max of 2**22, so never a live process
    (data_dir / "postgres" / "postmaster.pid").write_text(f"{dead}\n{data_dir}/postgres\n0\n1\n\n127.0.0.1\n\nready\n")
    (data_dir / "valkey" / "server.pid").write_text(f"{dead}\n1\n")

    urls = await asyncio.to_thread(servers.start)
    try:
        assert await _select_one(urls.database_url) == 1
        assert await _ping(urls.redis_url)
    finally:
        await asyncio.to_thread(servers.stop)


async def test_embedded_postgres_that_cannot_start_reports_its_log_and_leaves_nothing_running(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        servers = EmbeddedServers(data_dir, postgres_port=busy.getsockname()[1], ephemeral=True)
        with pytest.raises(EmbeddedServerError, match="Address already in use"):
            await asyncio.to_thread(servers.start)

    assert _processes_working_in(data_dir) == []


async def test_migration_creates_tables_and_a_partition_for_the_current_month(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        tables = {
            row["relname"]
            for row in await connection.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
            )
        }
        partitioned = await connection.fetchval(
            "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'usage_records'::regclass"
        )
        partitions = {
            row["relname"]
            for row in await connection.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'usage_records'::regclass"
            )
        }
    finally:
        await connection.close()

    assert {"tenants", "api_keys", "quotas", "usage_records"} <= tables
    assert partitioned == 1
    now = dt.datetime.now(dt.UTC)
    assert f"usage_records_y{now:%Y}m{now:%m}" in partitions


async def test_upgrade_on_a_migrated_database_changes_nothing(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)

    connection = await asyncpg.connect(database_url)
    try:
        revisions = await connection.fetch("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    assert len(revisions) == 1


async def test_upgrade_called_inside_an_event_loop_asks_for_to_thread(database_url: str) -> None:
    with pytest.raises(RuntimeError, match="to_thread"):
        upgrade(database_url)


async def test_database_url_fixture_gives_a_database_no_other_test_sees(
    database_url: str, servers: Servers, database_template: str
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("INSERT INTO tenants (name) VALUES ('acme')")
    finally:
        await connection.close()

    async with fresh_database(servers, database_template) as other_url:
        assert other_url != database_url
        other = await asyncpg.connect(other_url)
        try:
            assert await other.fetchval("SELECT count(*) FROM tenants") == 0
        finally:
            await other.close()


async def test_redis_url_fixture_is_the_workers_database_and_starts_empty(redis_url: str, servers: Servers) -> None:
    assert urlsplit(redis_url).path == f"/{redis_db_index(servers.worker)}"
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
    finally:
        await client.aclose()
