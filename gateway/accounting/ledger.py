"""Stage 9's durable half: usage records queued in memory and written to Postgres in batches.

1. `record()` only appends to an in-memory batch: it never waits and never touches the network,
   so a response is never delayed by the ledger.
2. A lifespan-owned task (`run`) writes whatever is pending every `flush_interval` seconds as one
   multi-row `INSERT … SELECT FROM unnest(…)`, `ON CONFLICT DO NOTHING` on (request_id, created_at),
   so a batch retried after an unclear failure is never counted twice.
3. A failed batch goes back to the front of the queue and is retried; `close()` (SIGTERM, after
   the server has drained) flushes everything still pending before the process exits.
4. The ledger is append-only and partitioned by month; `ensure_partitions` keeps the next
   months' partitions made ahead of time, and retention drops whole partitions.
5. Once a batch has committed, its budgeted records are reported as landed (`Landing`: with the xid8 of
   the transaction that wrote them) to `reconcile`, so that every Redis budget counter counts each record
   exactly once even across a Redis restart (`quota/lua/reconcile.lua`). A failed report is retried on
   the next flush; reporting the same landing twice changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from quota import BudgetTrail, Landing, QuotaBackendError, to_nano

if TYPE_CHECKING:
    from gateway.accounting.spool import Spool

_log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO usage_records (
    request_id, created_at, tenant_id, key_id, model, served_model, deployment, provider, route, stream,
    prompt_tokens, completion_tokens, cached_tokens, cost_usd, outcome, truncated, usage_source, duration_ms,
    admitted_at, end_user, routing_features
)
SELECT * FROM unnest(
    $1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::bool[], $11::int[], $12::int[], $13::int[], $14::numeric[], $15::text[], $16::bool[],
    $17::text[], $18::int[], $19::timestamptz[], $20::text[], $21::bytea[]
)
ON CONFLICT (request_id, created_at) DO NOTHING
"""
_COLUMNS = 21
# The xid8 of the transaction that wrote each row: this one's ($3) for the rows it inserted, an earlier
# attempt's (whose commit went unacknowledged) for the rows ON CONFLICT skipped; age() counts back from ours.
_WRITERS = """
SELECT request_id::text, $3::bigint - age(xmin) FROM usage_records
WHERE (request_id, created_at) IN (SELECT * FROM unnest($1::uuid[], $2::timestamptz[]))
"""
_MAX_UNRECONCILED = 100_000


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One served request in the ledger (never prompt or completion text)."""

    request_id: str
    created_at: dt.datetime
    tenant_id: str
    key_id: str | None
    model: str
    served_model: str
    deployment: str
    provider: str
    route: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    outcome: str
    truncated: bool
    usage_source: str
    duration_ms: int
    admitted_at: dt.datetime | None = None
    """When admission took the request, on the Redis clock (None if no Redis limit applied)."""
    end_user: str | None = None
    """The request's `user`, hashed as in the quota keys (`quota.keys.end_user_id`); never the raw value."""
    routing_features: bytes | None = None
    """For confidence-routed requests, the prompt's scorer features (`routing.features.keep_features`)."""
    budget_trail: BudgetTrail | None = None
    """Where Redis counts this request's spend (not a column: kept for reconciliation after the write)."""


def _columns(records: list[UsageRecord]) -> list[list[object]]:
    columns: list[list[object]] = [[] for _ in range(_COLUMNS)]
    for r in records:
        row: tuple[object, ...] = (
            uuid.UUID(r.request_id), r.created_at, uuid.UUID(r.tenant_id),
            uuid.UUID(r.key_id) if r.key_id else None, r.model, r.served_model, r.deployment, r.provider,
            r.route, r.stream, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cost_usd, r.outcome,
            r.truncated, r.usage_source, r.duration_ms, r.admitted_at, r.end_user, r.routing_features,
        )  # fmt: skip
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


class Ledger:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        flush_interval: float = 0.2,
        batch_size: int = 2000,
        on_flush: Callable[[int], None] = lambda n: None,
        on_error: Callable[[], None] = lambda: None,
        spool: Spool | None = None,
        reconcile: Callable[[Sequence[Landing]], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._spool = spool
        self._reconcile = reconcile
        self._unreconciled: list[Landing] = []
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._pending: list[UsageRecord] = []
        self._on_flush = on_flush
        self._on_error = on_error
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, record: UsageRecord) -> None:
        if self._spool is not None:
            self._spool.append(record)  # on disk before the response ends: survives a killed process
        self._pending.append(record)

    async def replay_spool(self) -> int:
        """Write the records that processes killed before their flush left in the spool; returns how many."""
        if self._spool is None:
            return 0
        replayed = 0
        for path, records in self._spool.orphans():
            for start in range(0, len(records), self._batch_size):
                self._unreconciled += await self._write(records[start : start + self._batch_size])
            path.unlink(missing_ok=True)
            replayed += len(records)
            _log.warning("replayed %d usage records left in %s by a process that stopped early", len(records), path)
        await self._report_landings()
        return replayed

    async def _write(self, batch: list[UsageRecord]) -> list[Landing]:
        """Insert a batch in one transaction; returns its budgeted records as landed."""
        async with self._pool.acquire() as conn, conn.transaction():
            xid = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))  # before age() reads it
            await conn.execute(_INSERT, *_columns(batch))
            traced = {r.request_id: r for r in batch if r.budget_trail is not None and r.cost_usd > 0}
            if not traced:
                return []
            ids = [uuid.UUID(r.request_id) for r in traced.values()]
            rows = await conn.fetch(_WRITERS, ids, [r.created_at for r in traced.values()], xid)
        landings = []
        for request_id, writer in rows:
            record = traced[request_id]
            assert record.budget_trail is not None
            admitted_ms = round(record.admitted_at.timestamp() * 1000) if record.admitted_at else 0
            landings.append(
                Landing(
                    request_id=request_id,
                    trail=record.budget_trail,
                    cost_nano=to_nano(record.cost_usd),
                    xid=writer,
                    admitted_at_ms=admitted_ms,
                )
            )
        return landings

    async def _report_landings(self) -> None:
        if self._reconcile is None or not self._unreconciled:
            self._unreconciled.clear()
            return
        landings, self._unreconciled = self._unreconciled, []
        try:
            await self._reconcile(landings)
        except QuotaBackendError as exc:
            # Redis is away: retried on the next flush. If it comes back empty, its rebuilt counters read
            # the ledger and these reports change nothing; if it kept its counters, they need them.
            self._unreconciled[:0] = landings
            if len(self._unreconciled) > _MAX_UNRECONCILED:
                dropped = len(self._unreconciled) - _MAX_UNRECONCILED
                del self._unreconciled[:dropped]
                _log.error("dropped %d budget reconciliations during a long Redis outage", dropped)
            _log.warning("budget counters not told of %d landed usage records yet: %s", len(landings), exc)

    async def ensure_partitions(self) -> None:
        await self._pool.execute("SELECT sluice_ensure_usage_partitions((now() AT TIME ZONE 'UTC')::date, 3)")

    async def run(self) -> None:
        """Flush on a timer until cancelled; make partitions ahead once a day."""
        last_partition_check = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()
            now = asyncio.get_running_loop().time()
            if now - last_partition_check > 86_400:
                last_partition_check = now
                try:
                    await self.ensure_partitions()
                except (OSError, asyncpg.PostgresError) as exc:
                    _log.warning("could not make usage partitions ahead: %s", exc)

    async def flush(self) -> bool:
        """Write everything pending; False if some of it could not be written (it stays queued)."""
        async with self._lock:
            if self._spool is not None and self._pending:
                self._spool.rotate()  # what is pending now is in sealed segments, dropped once written
            while self._pending:
                batch = self._pending[: self._batch_size]
                del self._pending[: len(batch)]
                try:
                    landed = await self._write(batch)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    self._pending[:0] = batch
                    self._on_error()
                    _log.warning("usage batch of %d not written yet: %s", len(batch), type(exc).__name__)
                    return False
                except asyncio.CancelledError:
                    # Cancelled mid-write (shutdown): keep the batch; if it did commit, the retry is a no-op.
                    self._pending[:0] = batch
                    raise
                self._on_flush(len(batch))
                self._unreconciled += landed
            if self._spool is not None:
                self._spool.written()
            await self._report_landings()
        return True

    async def close(self, deadline_s: float = 10.0) -> None:
        """Flush everything still pending, retrying until the deadline."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while not await self.flush() and loop.time() < end:  # noqa: ASYNC110  # polling Postgres, no event to await
            await asyncio.sleep(0.2)
        if self._pending:
            where = "; they stay in the spool for the next start" if self._spool is not None else ""
            _log.error("%d usage records could not be written before shutdown%s", len(self._pending), where)
        if self._spool is not None:
            self._spool.close(keep=bool(self._pending))
