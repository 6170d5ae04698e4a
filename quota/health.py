"""`RedisHealth`: whether the quota backend answers, so admissions stop paying a timeout each once it does not.

After one failed call, admissions go straight to the local fallback (RELIABILITY §6.2) while a probe
pings Redis every `probe_interval_s`; its first answer puts them back on Redis. Without this, a black-holed
Redis would cost every request the full admission timeout. Written by hand: it is a two-state circuit
breaker with one probe, smaller than any breaker library's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class RedisHealth:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout_s: float,
        probe_interval_s: float = 0.25,
        on_change: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._interval_s = probe_interval_s
        self._on_change = on_change
        self._up = True
        self._probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    def failed(self) -> None:
        """A call to Redis failed or timed out: decide locally until the probe sees Redis answer again."""
        if not self._up:
            return
        self._up = False
        self._on_change(False)
        self._probe = asyncio.get_running_loop().create_task(self._wait_until_up(), name="redis-health-probe")

    async def _wait_until_up(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await self._client.ping()
                self._up = True
                self._on_change(True)
                return

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
