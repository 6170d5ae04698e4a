"""The TCP fault proxy (`tests/fakes/tcp_proxy.py`) does what each toxic says, against a byte-recording echo
server and the suite's real Redis, so the fault tests built on it (RELIABILITY T09–T13) test the gateway, not it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.fakes.tcp_proxy import Down, Latency, LimitData, ResetPeer, Slicer, TcpFaultProxy, Timeout, Toxic

PAYLOAD = bytes(range(256)) * 4


@dataclass
class Echo:
    """An echo server on loopback that records the chunks each connection received, in order."""

    port: int = 0
    received: list[list[bytes]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        chunks: list[bytes] = []
        self.received.append(chunks)
        try:
            while data := await reader.read(65_536):
                chunks.append(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy cut or reset the connection: what these tests do on purpose
        finally:
            writer.close()
            self.tasks.discard(task)


@pytest.fixture(name="echo")
async def fx_echo() -> AsyncIterator[Echo]:
    echo = Echo()
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    echo.port = server.sockets[0].getsockname()[1]
    yield echo
    server.close()
    for task in list(echo.tasks):
        task.cancel()
    await asyncio.gather(*echo.tasks, return_exceptions=True)
    await server.wait_closed()


@pytest.fixture(name="redis_proxy")
async def fx_redis_proxy(redis_url: str) -> AsyncIterator[TcpFaultProxy]:
    """A proxy in front of this worker's Redis (the server itself is never faulted)."""
    parts = urlsplit(redis_url)
    async with TcpFaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def through(proxy: TcpFaultProxy, redis_url: str, socket_timeout: float = 1.0) -> AsyncIterator[aioredis.Redis]:
    """A Redis client that connects through `proxy`, without retries, so each fault shows on the first call."""
    parts = urlsplit(redis_url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    client = aioredis.Redis.from_url(
        urlunsplit(parts._replace(netloc=netloc)),
        retry=Retry(NoBackoff(), 0),
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
    )
    try:
        yield client
    finally:
        await client.aclose()


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(2):
        return await reader.read()


async def test_transparent_proxy_answers_redis_ping(redis_proxy: TcpFaultProxy, redis_url: str) -> None:
    async with through(redis_proxy, redis_url) as client:
        assert await client.ping() is True
    assert redis_proxy.connections == 1


async def test_transparent_proxy_passes_bytes_and_eof_unchanged(echo: Echo) -> None:
    data = PAYLOAD * 1024  # 1 MiB: many chunks each way
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(data)
        writer.write_eof()
        assert await read_to_end(reader) == data
        writer.close()
    assert b"".join(echo.received[0]) == data


async def test_latency_delays_each_direction_of_a_live_connection(echo: Echo) -> None:
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        proxy.set(Latency(seconds=0.2))
        started = time.monotonic()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert time.monotonic() - started >= 2 * 0.2 - 0.01  # lower bound only: a loaded machine is slower
        writer.close()


async def test_timeout_makes_redis_calls_time_out(redis_proxy: TcpFaultProxy, redis_url: str) -> None:
    async with through(redis_proxy, redis_url, socket_timeout=0.2) as client:
        assert await client.ping() is True
        redis_proxy.set(Timeout())
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.ping()


async def test_timeout_holds_data_until_cleared(echo: Echo) -> None:
    """A black hole accepts new connections and reads them, yet nothing passes until the toxic changes."""
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.set(Timeout())
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(4)
        assert proxy.connections == 1
        assert echo.received in ([], [[]])  # the upstream got nothing
        proxy.clear()
        async with asyncio.timeout(2):
            assert await reader.readexactly(4) == b"held"
        writer.close()


async def test_down_refuses_new_connections_and_closes_live_ones(echo: Echo) -> None:
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        proxy.set(Down())
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        with contextlib.suppress(ConnectionResetError):
            assert await read_to_end(reader) == b""
        writer.close()
        assert proxy.connections == 1


async def test_down_makes_redis_calls_fail(redis_proxy: TcpFaultProxy, redis_url: str) -> None:
    async with through(redis_proxy, redis_url) as client:
        assert await client.ping() is True
        redis_proxy.set(Down())
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()


async def test_reset_peer_resets_live_and_new_connections(echo: Echo) -> None:
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        proxy.set(ResetPeer())
        with pytest.raises(ConnectionResetError):
            await read_to_end(reader)
        writer.close()
        with pytest.raises(ConnectionResetError):  # at connect or at the first read: the RST may come first
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                await read_to_end(reader)
            finally:
                writer.close()
        assert proxy.connections == 2


async def test_reset_peer_makes_redis_calls_fail(redis_proxy: TcpFaultProxy, redis_url: str) -> None:
    redis_proxy.set(ResetPeer())
    async with through(redis_proxy, redis_url) as client:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()


async def test_slicer_delivers_the_exact_bytes_in_slices(echo: Echo) -> None:
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.set(Slicer(size=7, delay_s=0.001))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(PAYLOAD)
        writer.write_eof()
        assert await read_to_end(reader) == PAYLOAD
        writer.close()
    assert b"".join(echo.received[0]) == PAYLOAD
    assert len(echo.received[0]) > 1
    assert max(len(chunk) for chunk in echo.received[0]) < len(PAYLOAD)


async def test_slicer_keeps_redis_working(redis_proxy: TcpFaultProxy, redis_url: str) -> None:
    redis_proxy.set(Slicer(size=1, delay_s=0.001))
    async with through(redis_proxy, redis_url) as client:
        assert await client.set("sliced", b"v" * 50) is True
        assert await client.get("sliced") == b"v" * 50


async def test_limit_data_passes_exactly_the_limit_then_closes(echo: Echo) -> None:
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.set(LimitData(bytes=100))
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(PAYLOAD)
        with contextlib.suppress(ConnectionResetError):
            assert len(await read_to_end(reader)) <= 100
        writer.close()
    assert b"".join(echo.received[0]) == PAYLOAD[:100]


async def test_limit_data_cuts_a_large_redis_reply(redis_proxy: TcpFaultProxy, redis_url: str) -> None:
    async with through(redis_proxy, redis_url) as client:
        await client.set("large", b"v" * 1000)
        redis_proxy.set(LimitData(bytes=100))
        assert await client.ping() is True  # well under the limit, on the live connection
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get("large")


@pytest.mark.parametrize(
    "toxic",
    [Latency(seconds=0.05), Down(), Timeout(), ResetPeer(), Slicer(size=1), LimitData(bytes=1)],
    ids=["latency", "down", "timeout", "reset_peer", "slicer", "limit_data"],
)
async def test_clear_restores_service_on_a_fresh_connection(
    redis_proxy: TcpFaultProxy, redis_url: str, toxic: Toxic
) -> None:
    redis_proxy.set(toxic)
    redis_proxy.clear()
    async with through(redis_proxy, redis_url) as client:
        assert await client.ping() is True


async def test_exit_leaves_no_task_behind(echo: Echo) -> None:
    """Connections held by `Timeout`, sleeping in `Latency` or still idle are all ended on exit."""
    async with TcpFaultProxy("127.0.0.1", echo.port) as proxy:
        writers = []
        for toxic in (None, Latency(seconds=5), Timeout()):
            if toxic is not None:
                proxy.set(toxic)
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"x")
            writers.append(writer)
        async with asyncio.timeout(2):
            while len(echo.received) < 3:  # every connection has reached its pumps
                await asyncio.sleep(0.01)
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("TcpFaultProxy")]
    for writer in writers:
        writer.close()
