"""Fixtures for tests that drive the app over HTTP: a fake upstream and a gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway, file_config, running_gateway


@pytest.fixture(name="fake")
async def fx_fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(name="gateway")
async def fx_gateway(database_url: str, redis_url: str, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, redis_url, file_config(fake.base_url)) as gateway:
        yield gateway
