"""Redis clients for the cache tests: real Redis (this worker's flushed database), one client per "process"."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cache.store import CachedAnswer


@pytest.fixture(name="client")
async def fx_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(name="other_client")
async def fx_other_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A second client with its own connection pool, standing for another gateway process."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(name="dead_client")
async def fx_dead_client() -> AsyncIterator[aioredis.Redis]:
    """A client of a port nothing listens on: every call fails as with Redis down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


def answer(text: str = "Paris.", *, cost: str = "0.0042") -> CachedAnswer:
    body = (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1767225600,"model":"small-1","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"' + text.encode() + b'","refusal":null},"logprobs":null,'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'
    )
    return CachedAnswer(
        body=body, model="small-1", prompt_tokens=12, completion_tokens=3, cost_usd=Decimal(cost), route="fixed"
    )
