"""Lua scripts of the quota domain, read from `quota/lua/` once and registered with the Redis client.

Why Lua and not the `limits` library here: `limits` takes a round trip per limit, has no budget,
token-reservation or concurrency primitive, and cannot check several limits atomically; admission
must do all of that in one round trip. `limits` still backs the per-process fallback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


def _source(name: str, *, prelude: bool = False) -> str:
    """A script's text; `prelude` prepends `snapshot.lua` (Redis runs one source text per script)."""
    lua = resources.files("quota").joinpath("lua")
    return (lua.joinpath("snapshot.lua").read_text() if prelude else "") + lua.joinpath(name).read_text()


class Script:
    """One Lua script run by its SHA (`EVALSHA`), loaded again if Redis lost it (`NOSCRIPT` after a restart).

    Hand-rolled over `execute_command` because redis-py's `AsyncScript` adds a deprecation wrapper and
    argument copies to every call on the hot path; the behaviour is the same.
    """

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324  # Redis names scripts by SHA-1

    async def __call__(self, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        execute = self._client.execute_command  # untyped in redis-py's stubs
        try:
            return await execute("EVALSHA", self._sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            await execute("SCRIPT", "LOAD", self._source)  # type: ignore[no-untyped-call]
            return await execute("EVALSHA", self._sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]

    @property
    def sha(self) -> str:
        return self._sha

    @property
    def source(self) -> str:
        """For callers that pipeline `EVALSHA`, where NOSCRIPT cannot be retried: send `SCRIPT LOAD` first."""
        return self._source


class Scripts(msgspec.Struct, frozen=True):
    reserve: Script
    settle: Script
    seed_begin: Script
    seed: Script
    reconcile: Script
    hand_back: Script
    keep_alive: Script


def register(client: aioredis.Redis) -> Scripts:
    return Scripts(
        reserve=Script(client, _source("reserve.lua")),
        settle=Script(client, _source("settle.lua", prelude=True)),
        seed_begin=Script(client, _source("seed_begin.lua")),
        seed=Script(client, _source("seed.lua", prelude=True)),
        reconcile=Script(client, _source("reconcile.lua", prelude=True)),
        hand_back=Script(client, _source("hand_back.lua", prelude=True)),
        keep_alive=Script(client, _source("keep_alive.lua")),
    )
