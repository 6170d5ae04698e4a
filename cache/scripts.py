"""Lua scripts of the cache domain, read from `cache/lua/` once and run by SHA on a given Redis client."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


def _source(name: str) -> str:
    return resources.files("cache").joinpath("lua", name).read_text()


class Script:
    """One Lua script run by `EVALSHA`, loaded again when Redis lost it (`NOSCRIPT` after a restart or failover).

    The same small runner as `quota/scripts.py`; not imported from there because `quota` and `cache` stay
    independent (import-linter).
    """

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self._client = client
        self._source = _source(name)
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()  # noqa: S324  # Redis names scripts by SHA-1

    async def __call__(self, keys: Sequence[str], args: Sequence[int | str | bytes]) -> Any:
        execute = self._client.execute_command  # untyped in redis-py's stubs
        try:
            return await execute("EVALSHA", self._sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            await execute("SCRIPT", "LOAD", self._source)  # type: ignore[no-untyped-call]
            return await execute("EVALSHA", self._sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
