"""Session-wide real PostgreSQL and Redis (STYLE §6); the machinery lives in `tests/servers.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway, file_config, running_gateway
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


@pytest.fixture(name="fake")
async def fx_fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on loopback (behaviour picked by model name)."""
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(name="gateway")
async def fx_gateway(database_url: str, redis_url: str, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    """A gateway in this process, over real HTTP, with simulator models and one model per fake scenario."""
    async with running_gateway(database_url, redis_url, file_config(fake.base_url)) as gateway:
        yield gateway
