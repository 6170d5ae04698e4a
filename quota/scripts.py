"""Lua scripts of the quota domain, read from `quota/lua/` once and registered with the Redis client.

Why Lua rather than the `limits` library on Redis: `limits` takes one round trip per limit plus
another for the window stats the headers need, and cannot check several limits atomically.
"""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return resources.files("quota").joinpath("lua", name).read_text()


def register_admit(client: aioredis.Redis) -> AsyncScript:
    return client.register_script(_source("admit.lua"))
