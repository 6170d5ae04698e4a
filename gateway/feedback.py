"""Feedback on answers (`POST /v1/feedback`): a tenant rates one of its requests `good` or `bad`.

Ratings are keyed by (tenant, request id) and joined with the tenant's own usage records when they are used
(`routing.feedback_data`), so a rating sent for another tenant's request id matches nothing and leaks nothing.
The latest rating of a request wins.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import asyncpg
import msgspec

from gateway.errors import ServiceUnavailableError

_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Feedback(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    request_id: uuid.UUID
    """The `x-request-id` of the rated response."""
    rating: Literal["good", "bad"]
    comment: Annotated[str, msgspec.Meta(max_length=2000)] | None = None

    def __post_init__(self) -> None:
        if self.comment is not None and "\x00" in self.comment:
            raise ValueError("`comment` must not contain NUL (\\u0000)")  # Postgres refuses it in text


class FeedbackStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, tenant_id: str, feedback: Feedback) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO feedback (tenant_id, request_id, rating, comment) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (tenant_id, request_id) DO UPDATE"
                " SET rating = excluded.rating, comment = excluded.comment, created_at = now()",
                uuid.UUID(tenant_id), feedback.request_id, feedback.rating, feedback.comment,
            )  # fmt: skip
        except _ERRORS as exc:
            raise ServiceUnavailableError(
                "Feedback cannot be stored right now; retry.", headers={"retry-after": "1"}
            ) from exc
