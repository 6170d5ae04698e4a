"""RELIABILITY T28, the partition case: a process cut off from Redis when a key is revoked still refuses
the key within its auth-cache TTL (3 s here), because cached keys are re-read from Postgres after it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from tests.harness import file_config, running_gateway

TTL_S = 3.0
BODY = {"model": "small", "messages": [{"role": "user", "content": "still there?"}]}


class _Cuttable:
    """A TCP forwarder to Redis that can be cut: open connections are dropped and new ones refused."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut = False
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def sever(self) -> None:
        self.cut = True
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Cuttable]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self.sever()
            server.close()


async def test_process_cut_off_from_redis_refuses_a_revoked_key_within_the_cache_ttl(
    database_url: str, redis_url: str
) -> None:
    parts = urlsplit(redis_url)
    proxy = _Cuttable(parts.hostname or "127.0.0.1", parts.port or 6379)
    async with proxy.running():
        proxied_url = f"redis://127.0.0.1:{proxy.port}{parts.path}"
        async with (
            running_gateway(database_url, redis_url, file_config(), auth_cache_ttl_s=TTL_S) as p1,
            running_gateway(database_url, proxied_url, file_config(), auth_cache_ttl_s=TTL_S) as p2,
        ):
            tenant_id, key = await p1.tenant_key()
            headers = {"authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(headers=headers, timeout=10) as client:
                assert (await client.post(f"{p2.base_url}/chat/completions", json=BODY)).status_code == 200
                proxy.sever()  # P2 misses the revocation's pub/sub message and its epoch poll fails
                keys = (await p1.admin.get(f"/admin/tenants/{tenant_id}/keys")).json()["data"]
                assert (await p1.admin.delete(f"/admin/keys/{keys[0]['id']}")).status_code == 200
                revoked_at = time.monotonic()
                refused_after = None
                while time.monotonic() - revoked_at < TTL_S + 2:
                    if (await client.post(f"{p2.base_url}/chat/completions", json=BODY)).status_code == 401:
                        refused_after = time.monotonic() - revoked_at
                        break
                    await asyncio.sleep(0.1)
    assert refused_after is not None, "a partitioned process must not accept a revoked key forever"
    assert refused_after <= TTL_S + 0.5, refused_after
