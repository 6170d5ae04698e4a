"""`RedisHealth`: whether the quota backend answers, so admissions stop paying a timeout each once it does not.

After `threshold` calls in a row fail, admissions go straight to the local fallback (RELIABILITY §6.2)
while a probe pings Redis every `probe_interval_s`; its first answer puts them back on Redis. Without this,
a black-holed Redis would cost every request the full admission timeout; with a threshold of one, a single
slow call on a busy machine would loosen every limit to its local share for a probe interval. Written by
hand: a two-state circuit breaker with one probe is smaller than any breaker library's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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
        threshold: int = 3,
        on_change: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._interval_s = probe_interval_s
        self._on_change = on_change
        self._threshold = threshold
        self._failures = 0
        self._up = True
        self._down_since = 0.0
        self._probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    @property
    def down_for_s(self) -> float:
        """How long Redis has been considered down (0 while it is up)."""
        return 0.0 if self._up else time.monotonic() - self._down_since

    def succeeded(self) -> None:
        self._failures = 0

    def failed(self) -> None:
        """A call to Redis failed or timed out; after `threshold` in a row, decide locally until the probe
        sees Redis answer again."""
        self._failures += 1
        if not self._up or self._failures < self._threshold:
            return
        self._up, self._down_since = False, time.monotonic()
        self._on_change(False)
        self._probe = asyncio.get_running_loop().create_task(self._wait_until_up(), name="redis-health-probe")

    async def _wait_until_up(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await self._client.ping()
                # Idle pooled connections may still point at the server that went away (a restart leaves
                # them dead): drop them, or each would fail one admission on its next use.
                await self._client.connection_pool.disconnect(inuse_connections=False)
                self._up, self._failures = True, 0
                self._on_change(True)
                return

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
