"""Lua scripts of the quota domain, read from `quota/lua/` once and registered with the Redis client.

Why Lua and not the `limits` library here: `limits` takes a round trip per limit, has no budget,
token-reservation or concurrency primitive, and cannot check several limits atomically; admission
must do all of that in one round trip. `limits` still backs the per-process fallback.
"""

from __future__ import annotations

from importlib import resources

import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return resources.files("quota").joinpath("lua", name).read_text()


class Scripts(msgspec.Struct, frozen=True):
    reserve: AsyncScript
    settle: AsyncScript
    seed: AsyncScript


def register(client: aioredis.Redis) -> Scripts:
    return Scripts(
        reserve=client.register_script(_source("reserve.lua")),
        settle=client.register_script(_source("settle.lua")),
        seed=client.register_script(_source("seed.lua")),
    )
