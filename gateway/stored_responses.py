"""Responses the Responses API stored (`store`, the default): tenant-scoped rows in Postgres.

A tenant can read, continue (`previous_response_id`) or delete only its own responses; another tenant's id
reads as absent (404), never as forbidden, so ids leak nothing. Expired rows are never served and are deleted
in batches of `_PURGE_BATCH` by `purge`, run by the gateway every few minutes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import uuid
from typing import Any, Final

import asyncpg
import msgspec

from gateway.errors import ServiceUnavailableError

_PURGE_BATCH: Final = 1000
_log = logging.getLogger(__name__)
_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    response: dict[str, Any]
    input_items: list[Any]
    """The conversation's input items up to and including this turn's (not its output)."""


_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def is_response_id(value: str) -> bool:
    """Ids this store can hold (`resp_…`); anything else is simply not found, without a query."""
    return _ID.match(value) is not None


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, *, retention: dt.timedelta) -> None:
        self._pool = pool
        self._retention = retention

    async def save(self, tenant_id: str, response: dict[str, Any], input_items: list[Any]) -> None:
        now = dt.datetime.now(dt.UTC)
        try:
            await self._pool.execute(
                "INSERT INTO stored_responses (id, tenant_id, created_at, expires_at, input_items, response)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                response["id"], uuid.UUID(tenant_id), now, now + self._retention,
                msgspec.json.encode(input_items), msgspec.json.encode(response),
            )  # fmt: skip
        except _ERRORS as exc:
            raise ServiceUnavailableError(
                "The response could not be stored; retry, or send `store: false`.", headers={"retry-after": "1"}
            ) from exc

    async def get(self, tenant_id: str, response_id: str) -> StoredResponse | None:
        if not is_response_id(response_id):
            return None
        try:
            row = await self._pool.fetchrow(
                "SELECT input_items, response FROM stored_responses"
                " WHERE id = $1 AND tenant_id = $2 AND expires_at > now()",
                response_id, uuid.UUID(tenant_id),
            )  # fmt: skip
        except _ERRORS as exc:
            raise _unavailable() from exc
        if row is None:
            return None
        return StoredResponse(input_items=msgspec.json.decode(row[0]), response=msgspec.json.decode(row[1]))

    async def delete(self, tenant_id: str, response_id: str) -> bool:
        if not is_response_id(response_id):
            return False
        try:
            status = await self._pool.execute(
                "DELETE FROM stored_responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now()",
                response_id, uuid.UUID(tenant_id),
            )  # fmt: skip
        except _ERRORS as exc:
            raise _unavailable() from exc
        return bool(status == "DELETE 1")

    async def run_purge(self, every_s: float = 300.0) -> None:
        """Purge on a timer until cancelled (a supervisor task)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.purge()
            except _ERRORS as exc:
                _log.warning("could not purge expired stored responses: %s", type(exc).__name__)

    async def purge(self) -> int:
        """Delete expired rows, one small batch at a time (no long lock, no mass DELETE)."""
        total = 0
        while True:
            status = await self._pool.execute(
                "DELETE FROM stored_responses WHERE id IN"
                " (SELECT id FROM stored_responses WHERE expires_at <= now() LIMIT $1)",
                _PURGE_BATCH,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < _PURGE_BATCH:
                return total


def _unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError("Stored responses are unavailable; retry.", headers={"retry-after": "1"})
