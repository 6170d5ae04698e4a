"""Postgres store of tenants, keys and quotas; the only module that holds their SQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import msgspec

from tenants.errors import KeyRevokedError, TenantNotFoundError, TenantsBackendError
from tenants.keys import IssuedKey, KeyHasher, issue_key
from tenants.models import ApiKey, KeyId, Quota, QuotaRules, Tenant, TenantContext, TenantId

_LIST_TENANTS = """
SELECT t.id, t.name, t.created_at, q.rpm, q.tpm, q.budget_usd, q.budget_period, q.max_concurrency, q.weight, q.rules
FROM tenants t LEFT JOIN quotas q ON q.tenant_id = t.id ORDER BY t.created_at
"""
_GET_TENANT = """
SELECT t.id, t.name, t.created_at, q.rpm, q.tpm, q.budget_usd, q.budget_period, q.max_concurrency, q.weight, q.rules
FROM tenants t LEFT JOIN quotas q ON q.tenant_id = t.id WHERE t.id = $1
"""
_KEY_BY_PREFIX = """
SELECT k.id AS key_id, k.tenant_id, k.prefix, k.digest, k.pepper_version, k.created_at AS key_created_at,
       k.revoked_at, k.expires_at,
       t.name, q.rpm, q.tpm, q.budget_usd, q.budget_period, q.max_concurrency, q.weight, q.rules
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id LEFT JOIN quotas q ON q.tenant_id = t.id
WHERE k.prefix = $1
"""
_INSERT_KEY = """
INSERT INTO api_keys (tenant_id, prefix, digest, pepper_version, expires_at)
VALUES ($1, $2, $3, $4, $5) RETURNING *
"""
# LEAST ignores NULL, so a key without an expiry gets `now() + overlap` and an earlier expiry is kept.
_SHORTEN_EXPIRY = "UPDATE api_keys SET expires_at = LEAST(expires_at, now() + $2::interval) WHERE id = $1 RETURNING *"
_BACKEND_ERRORS = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
)


def _as_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise TenantNotFoundError(value) from None


_rules_decoder = msgspec.json.Decoder(QuotaRules)


def _quota(row: asyncpg.Record) -> Quota:
    raw = row["rules"]
    rules = _rules_decoder.decode(raw) if raw else QuotaRules()
    return Quota(
        **msgspec.structs.asdict(rules),
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"] or "month",
        max_concurrency=row["max_concurrency"],
        weight=row["weight"] or 1,
    )


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(id=TenantId(str(row["id"])), name=row["name"], created_at=row["created_at"], quota=_quota(row))


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=KeyId(str(row["id"])),
        tenant_id=TenantId(str(row["tenant_id"])),
        prefix=row["prefix"],
        digest=bytes(row["digest"]),
        pepper_version=row["pepper_version"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
    )


class TenantStore:
    """Tenants, keys and quotas in Postgres. Connection failures surface as `TenantsBackendError`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self._pool.fetch(query, *args)
        except _BACKEND_ERRORS as exc:
            raise TenantsBackendError(str(exc)) from exc

    async def create_tenant(self, name: str, quota: Quota) -> Tenant:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                tenant_id = await conn.fetchval("INSERT INTO tenants (name) VALUES ($1) RETURNING id", name)
                await self._write_quota(conn, tenant_id, quota)
        except OSError as exc:
            raise TenantsBackendError(str(exc)) from exc
        return await self.get_tenant(TenantId(str(tenant_id)))

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._fetch(_LIST_TENANTS)
        return [_tenant(row) for row in rows]

    async def get_tenant(self, tenant_id: TenantId) -> Tenant:
        rows = await self._fetch(_GET_TENANT, _as_uuid(tenant_id))
        if not rows:
            raise TenantNotFoundError(tenant_id)
        return _tenant(rows[0])

    async def rename_tenant(self, tenant_id: TenantId, name: str) -> Tenant:
        rows = await self._fetch("UPDATE tenants SET name = $2 WHERE id = $1 RETURNING id", _as_uuid(tenant_id), name)
        if not rows:
            raise TenantNotFoundError(tenant_id)
        return await self.get_tenant(tenant_id)

    async def delete_tenant(self, tenant_id: TenantId) -> list[KeyId]:
        """Delete a tenant and its keys; returns the key ids so callers can fan out revocation."""
        async with self._pool.acquire() as conn, conn.transaction():
            key_rows = await conn.fetch("SELECT id FROM api_keys WHERE tenant_id = $1", _as_uuid(tenant_id))
            deleted = await conn.fetchval("DELETE FROM tenants WHERE id = $1 RETURNING id", _as_uuid(tenant_id))
        if deleted is None:
            raise TenantNotFoundError(tenant_id)
        return [KeyId(str(row["id"])) for row in key_rows]

    async def put_quota(self, tenant_id: TenantId, quota: Quota) -> Tenant:
        async with self._pool.acquire() as conn:
            exists = await conn.fetchval("SELECT 1 FROM tenants WHERE id = $1", _as_uuid(tenant_id))
            if exists is None:
                raise TenantNotFoundError(tenant_id)
            await self._write_quota(conn, _as_uuid(tenant_id), quota)
        return await self.get_tenant(tenant_id)

    @staticmethod
    async def _write_quota(
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[asyncpg.Record], tenant_id: uuid.UUID, quota: Quota
    ) -> None:
        await conn.execute(
            """
            INSERT INTO quotas (
                tenant_id, rpm, tpm, budget_usd, budget_period, max_concurrency, weight, rules, updated_at
            )
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, now())
            ON CONFLICT (tenant_id) DO UPDATE SET rpm = $2, tpm = $3, budget_usd = $4, budget_period = $5,
                max_concurrency = $6, weight = $7, rules = $8::jsonb, updated_at = now()
            """,
            tenant_id,
            quota.rpm,
            quota.tpm,
            quota.budget_usd,
            quota.budget_period,
            quota.max_concurrency,
            quota.weight,
            msgspec.json.encode(quota.rules()).decode(),
        )

    async def create_key(
        self, tenant_id: TenantId, hasher: KeyHasher, expires_at: dt.datetime | None = None
    ) -> tuple[ApiKey, IssuedKey]:
        issued = issue_key()
        try:
            rows = await self._pool.fetch(
                _INSERT_KEY,
                _as_uuid(tenant_id),
                issued.prefix,
                hasher.digest(issued.secret),
                hasher.current_version,
                expires_at,
            )
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise TenantNotFoundError(tenant_id) from None
        return _key(rows[0]), issued

    async def list_keys(self, tenant_id: TenantId) -> list[ApiKey]:
        rows = await self._fetch("SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at", _as_uuid(tenant_id))
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id: KeyId) -> ApiKey:
        rows = await self._fetch(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING *", _as_uuid(key_id)
        )
        if not rows:
            raise TenantNotFoundError(key_id)
        return _key(rows[0])

    async def roll_key(
        self, key_id: KeyId, hasher: KeyHasher, overlap: dt.timedelta
    ) -> tuple[ApiKey, IssuedKey, ApiKey]:
        """Issue a successor to `key_id` for the same tenant; the old key then expires after `overlap`.

        Returns the new key, its plaintext (shown once) and the old key as it now stands. An old key that
        already expires sooner keeps its expiry: a roll never extends a key's life.

        Raises:
            TenantNotFoundError: no key has that id.
            KeyRevokedError: the key is revoked and has nothing to hand over.
        """
        old_id = _as_uuid(key_id)
        issued = issue_key()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # FOR UPDATE: a concurrent revoke or roll of the same key waits for this one, so a revoked key
                # can never gain a successor.
                old = await conn.fetchrow("SELECT tenant_id, revoked_at FROM api_keys WHERE id = $1 FOR UPDATE", old_id)
                if old is None:
                    raise TenantNotFoundError(key_id)
                if old["revoked_at"] is not None:
                    raise KeyRevokedError(key_id)
                new_row = await conn.fetchrow(
                    _INSERT_KEY,
                    old["tenant_id"],
                    issued.prefix,
                    hasher.digest(issued.secret),
                    hasher.current_version,
                    None,
                )
                old_row = await conn.fetchrow(_SHORTEN_EXPIRY, old_id, overlap)
        except _BACKEND_ERRORS as exc:
            raise TenantsBackendError(str(exc)) from exc
        assert new_row is not None and old_row is not None  # INSERT … RETURNING and an UPDATE of a locked row
        return _key(new_row), issued, _key(old_row)

    async def key_by_prefix(self, prefix: str) -> tuple[ApiKey, TenantContext] | None:
        """The key and the context it authenticates as, or None. Revoked keys are returned too."""
        rows = await self._fetch(_KEY_BY_PREFIX, prefix)
        if not rows:
            return None
        row = rows[0]
        key = ApiKey(
            id=KeyId(str(row["key_id"])),
            tenant_id=TenantId(str(row["tenant_id"])),
            prefix=row["prefix"],
            digest=bytes(row["digest"]),
            pepper_version=row["pepper_version"],
            created_at=row["key_created_at"],
            revoked_at=row["revoked_at"],
            expires_at=row["expires_at"],
        )
        ctx = TenantContext(
            tenant_id=key.tenant_id,
            tenant_name=row["name"],
            key_id=key.id,
            key_prefix=key.prefix,
            quota=_quota(row),
            expires_at=key.expires_at,
        )
        return key, ctx
