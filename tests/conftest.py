"""Session-wide real PostgreSQL and Redis (STYLE §6); the machinery lives in `tests/servers.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.servers import Servers, create_template, drop_database, flushed_redis_url, fresh_database, session_servers


@pytest.fixture(name="servers", scope="session")
def fx_servers(worker_id: str) -> Iterator[Servers]:
    with session_servers(worker_id) as servers:
        yield servers


@pytest.fixture(name="database_template", scope="session")
async def fx_database_template(servers: Servers) -> AsyncIterator[str]:
    name = await create_template(servers)
    yield name
    await drop_database(servers, name)


@pytest.fixture(name="database_url")
async def fx_database_url(servers: Servers, database_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database of the test's own, dropped afterwards."""
    async with fresh_database(servers, database_template) as url:
        yield url


@pytest.fixture(name="redis_url")
def fx_redis_url(servers: Servers) -> str:
    """This xdist worker's Redis database, flushed at test start."""
    return flushed_redis_url(servers)
