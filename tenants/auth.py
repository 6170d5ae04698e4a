"""Stage 1, authenticate: API key → `TenantContext`, from an in-process cache kept honest through Redis.

1. The key is parsed and checksum-verified without touching storage (malformed → refused at once).
2. The cache maps prefix → stored key (or "unknown", for `negative_ttl`); a miss reads Postgres once.
3. The digest is recomputed and compared in constant time on every request, also for unknown
   prefixes, so unknown prefix and wrong secret cost the same and answer the same.
4. Revocations and quota changes bump an epoch in Redis and are published on a channel; every
   process drops its cache on the message (fast path) or when its 500 ms epoch poll sees a new
   value (backstop for missed messages). Positive entries also expire after `ttl` seconds, which
   bounds staleness while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tenants.errors import InvalidKeyError
from tenants.keys import KeyHasher, parse_key
from tenants.models import ApiKey, TenantContext
from tenants.store import TenantStore

EPOCH_KEY = "sluice:auth:epoch"
CHANNEL = "sluice:auth:invalidate"
_log = logging.getLogger(__name__)
_UNKNOWN_DIGEST = b"\x00" * 32


def _stop_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    redis-py sends through `asyncio.wait_for`, which on Python 3.11 can lose a cancellation that races
    the send's completion (CPython gh-86296, fixed in 3.12); the loops below would then run forever and
    hold up shutdown, because a `TaskGroup` cancels its children only once.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Entry(msgspec.Struct, frozen=True):
    key: ApiKey | None
    ctx: TenantContext | None
    expires: float


class Authenticator:
    def __init__(
        self,
        store: TenantStore,
        hasher: KeyHasher,
        redis: aioredis.Redis,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 60.0,
        epoch_poll_interval: float = 0.5,
    ) -> None:
        self._store = store
        self.hasher = hasher
        self._redis = redis
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._poll_interval = epoch_poll_interval
        self._cache: dict[str, _Entry] = {}
        self._epoch: bytes | str | None = None

    async def authenticate(self, token: str) -> TenantContext:
        parsed = parse_key(token)
        now = time.monotonic()
        entry = self._cache.get(parsed.prefix)
        if entry is None or entry.expires <= now:
            found = await self._store.key_by_prefix(parsed.prefix)
            if found is None:
                entry = _Entry(None, None, now + self._negative_ttl)
            else:
                entry = _Entry(found[0], found[1], now + self._ttl)
            self._cache[parsed.prefix] = entry
        key, ctx = entry.key, entry.ctx
        if key is None or ctx is None:
            self.hasher.verify(parsed.secret, _UNKNOWN_DIGEST, self.hasher.current_version)
            raise InvalidKeyError("unknown")
        if not self.hasher.verify(parsed.secret, key.digest, key.pepper_version):
            raise InvalidKeyError("digest")
        if key.revoked_at is not None:
            raise InvalidKeyError("revoked")
        if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.UTC):
            raise InvalidKeyError("expired")
        return ctx

    def forget_all(self) -> None:
        self._cache.clear()

    async def announce_change(self) -> None:
        """Tell every process to drop cached keys and quotas (after a revoke or a quota change)."""
        self.forget_all()
        await self._redis.incr(EPOCH_KEY)
        await self._redis.publish(CHANNEL, b"all")

    async def run(self) -> None:
        """Keep the cache honest until cancelled: pub/sub listener plus epoch poll."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen())
            group.create_task(self._poll_epoch())

    async def _poll_epoch(self) -> None:
        while True:
            _stop_if_cancelled()
            with contextlib.suppress(RedisError, OSError):
                epoch = await self._redis.get(EPOCH_KEY)
                if epoch != self._epoch:
                    if self._epoch is not None or epoch is not None:
                        self.forget_all()
                    self._epoch = epoch
            await asyncio.sleep(self._poll_interval)

    async def _listen(self) -> None:
        while True:
            _stop_if_cancelled()
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.forget_all()  # messages may have been missed while unsubscribed
                    while True:
                        _stop_if_cancelled()
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            self.forget_all()
            except (RedisError, OSError) as exc:
                _log.warning("auth invalidation channel lost: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
