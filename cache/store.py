"""The answer store: `CachedAnswer`s in Redis under tenant-scoped keys, with a TTL and a per-tenant bound."""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache.errors import CacheUnavailableError
from cache.keys import PREFIX, KeySpace, RequestKey, tenant_of
from cache.scripts import Script


class CachedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One answer as the client got it, and what the gateway needs to charge a hit and record the saving."""

    body: bytes
    """The exact JSON body of a non-streaming `chat.completion` (a streamed answer is stored assembled)."""
    model: str
    """The model that served it (`x-sluice-model` on a hit)."""
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens the upstream served from its own prompt cache."""
    cost_usd: Decimal
    """What the original call cost; a hit saves this (less the policy's `charge_fraction`)."""
    created_at: float = msgspec.field(default_factory=time.time)
    """Unix seconds when the answer was produced."""
    route: str | None = None
    """What the router decided for the original call (`x-sluice-route`), if the gateway records it."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedAnswer)


def encode_answer(answer: CachedAnswer) -> bytes:
    """The stored form (MessagePack); its length is what `max_entry_bytes` bounds."""
    return _encoder.encode(answer)


def decode_answer(raw: bytes) -> CachedAnswer | None:
    """`None` for an entry written by an incompatible version: a miss, overwritten by the next fill."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None


class DecisionCache:
    """Answers by request key. Every Redis failure surfaces as `CacheUnavailableError`, nothing else.

    The client must return bytes (`decode_responses=False`, redis-py's default): entries are MessagePack.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = PREFIX) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("`DecisionCache` needs a Redis client with `decode_responses=False`")
        self.redis = redis
        self.keys = KeySpace(prefix)
        self._put = Script(redis, "put.lua")

    async def get(self, key: RequestKey) -> CachedAnswer | None:
        try:
            # bytes, not str: `decode_responses` is checked in `__init__`
            raw: bytes | None = await self.redis.get(self.keys.answer(key))  # type: ignore[assignment]
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(f"cache read of `{key}` failed: {exc}") from exc
        return None if raw is None else decode_answer(raw)

    async def put(
        self,
        tenant_id: str,
        key: RequestKey,
        answer: CachedAnswer,
        ttl_s: float,
        max_entries_per_tenant: int,
        *,
        max_entry_bytes: int | None = None,
    ) -> bool:
        """Store `answer` for `ttl_s` and evict the tenant's entries closest to expiry past the bound.

        Returns False, storing nothing, when the encoded entry is larger than `max_entry_bytes`.
        """
        if tenant_of(key) != tenant_id:
            raise ValueError(f"request key `{key}` does not belong to tenant `{tenant_id}`")
        value = encode_answer(answer)
        if max_entry_bytes is not None and len(value) > max_entry_bytes:
            return False
        ttl_ms = max(1, round(ttl_s * 1000))
        keys = [self.keys.answer(key), self.keys.answer_index(tenant_id)]
        try:
            await self._put(keys, [value, ttl_ms, max_entries_per_tenant, KeySpace.digest_of(key)])
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(f"cache write of `{key}` failed: {exc}") from exc
        return True
