"""`/admin`: tenants, keys, quotas and usage for operators, behind the admin token (a guard, off the hot path)."""

from __future__ import annotations

import datetime as dt
import hmac

import msgspec
from litestar import Router, delete, get, patch, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler

from gateway.accounting.usage import month_start, quota_remaining, usage_summary
from gateway.api.openapi_docs import ADMIN_ERRORS, ADMIN_SECURITY
from gateway.errors import AuthenticationError, InvalidRequestError
from gateway.pipeline.admit import configured_levels
from gateway.runtime import Runtime
from gateway.schema.admin import (
    KeyCreated,
    KeyIn,
    KeyList,
    KeyOut,
    KeyRolled,
    KeyRollIn,
    QuotaIn,
    TenantIn,
    TenantList,
    TenantOut,
    TenantPatch,
    UsageOut,
    check_quota,
)
from tenants.errors import KeyRevokedError
from tenants.models import ApiKey, KeyId, Quota, Tenant, TenantId


def require_admin(connection: ASGIConnection[BaseRouteHandler, None, None, State], _: BaseRouteHandler) -> None:
    """Only the admin token opens `/admin`; tenant keys and missing tokens get 401."""
    runtime: Runtime = connection.app.state.runtime
    header = connection.headers.get("authorization", "")
    token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
    expected = runtime.admin_token
    if expected is None or not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthenticationError("This route needs the admin token.", code="invalid_admin_token")


def _checked(quota: Quota) -> Quota:
    problem = check_quota(quota)
    if problem is not None:
        param, message = problem
        raise InvalidRequestError(message, param=param)
    return quota


def _rt(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def _tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(id=tenant.id, name=tenant.name, created_at=tenant.created_at, quota=tenant.quota)


def _key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        tenant_id=key.tenant_id,
        prefix=key.prefix,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )


@post("/tenants", status_code=201, responses=ADMIN_ERRORS)
async def create_tenant(data: TenantIn, state: State) -> TenantOut:
    quota = _checked(data.quota or Quota())
    return _tenant_out(await _rt(state).store.create_tenant(data.name, quota))


@get("/tenants", responses=ADMIN_ERRORS)
async def list_tenants(state: State) -> TenantList:
    return TenantList(data=[_tenant_out(t) for t in await _rt(state).store.list_tenants()])


@get("/tenants/{tenant_id:str}", responses=ADMIN_ERRORS)
async def get_tenant(tenant_id: str, state: State) -> TenantOut:
    return _tenant_out(await _rt(state).store.get_tenant(TenantId(tenant_id)))


@patch("/tenants/{tenant_id:str}", responses=ADMIN_ERRORS)
async def patch_tenant(tenant_id: str, data: TenantPatch, state: State) -> TenantOut:
    return _tenant_out(await _rt(state).store.rename_tenant(TenantId(tenant_id), data.name))


@delete("/tenants/{tenant_id:str}", status_code=204, responses=ADMIN_ERRORS)
async def delete_tenant(tenant_id: str, state: State) -> None:
    rt = _rt(state)
    await rt.store.delete_tenant(TenantId(tenant_id))
    await rt.authenticator.announce_change()


@post("/tenants/{tenant_id:str}/keys", status_code=201, responses=ADMIN_ERRORS)
async def create_key(tenant_id: str, state: State, data: KeyIn | None = None) -> KeyCreated:
    rt = _rt(state)
    expires_at = data.expires_at if data else None
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidRequestError("`expires_at` needs a time zone (e.g. `Z`).", param="expires_at")
    key, issued = await rt.store.create_key(TenantId(tenant_id), rt.authenticator.hasher, expires_at)
    return KeyCreated(
        id=key.id,
        tenant_id=key.tenant_id,
        prefix=key.prefix,
        key=issued.plaintext,
        created_at=key.created_at,
        expires_at=key.expires_at,
    )


@get("/tenants/{tenant_id:str}/keys", responses=ADMIN_ERRORS)
async def list_keys(tenant_id: str, state: State) -> KeyList:
    rt = _rt(state)
    await rt.store.get_tenant(TenantId(tenant_id))
    return KeyList(data=[_key_out(k) for k in await rt.store.list_keys(TenantId(tenant_id))])


@delete("/keys/{key_id:str}", status_code=200, responses=ADMIN_ERRORS)
async def revoke_key(key_id: str, state: State) -> KeyOut:
    rt = _rt(state)
    key = await rt.store.revoke_key(KeyId(key_id))
    await rt.authenticator.announce_change()
    return _key_out(key)


@post("/keys/{key_id:str}/roll", status_code=201, responses=ADMIN_ERRORS)
async def roll_key(key_id: str, state: State, data: KeyRollIn | None = None) -> KeyRolled:
    """Issue a successor key (shown once); the old key keeps working for `overlap_s` seconds, then expires."""
    rt = _rt(state)
    overlap = dt.timedelta(seconds=(data or KeyRollIn()).overlap_s)
    try:
        key, issued, old = await rt.store.roll_key(KeyId(key_id), rt.authenticator.hasher, overlap)
    except KeyRevokedError:
        raise InvalidRequestError(
            f"Key `{key_id}` is revoked and cannot be rolled; create a new key instead.", code="key_revoked"
        ) from None
    # Every process caches the old key without its new expiry: drop the caches everywhere (≤ 1 s).
    await rt.authenticator.announce_change()
    return KeyRolled(
        id=key.id,
        tenant_id=key.tenant_id,
        prefix=key.prefix,
        key=issued.plaintext,
        created_at=key.created_at,
        expires_at=key.expires_at,
        old_key=_key_out(old),
    )


@get("/tenants/{tenant_id:str}/quota", responses=ADMIN_ERRORS)
async def get_quota(tenant_id: str, state: State) -> Quota:
    return (await _rt(state).store.get_tenant(TenantId(tenant_id))).quota


@put("/tenants/{tenant_id:str}/quota", responses=ADMIN_ERRORS)
async def put_quota(tenant_id: str, data: QuotaIn, state: State) -> Quota:
    rt = _rt(state)
    tenant = await rt.store.put_quota(TenantId(tenant_id), _checked(data))
    await rt.authenticator.announce_change()
    return tenant.quota


@get("/tenants/{tenant_id:str}/usage", responses=ADMIN_ERRORS)
async def tenant_usage(
    tenant_id: str, state: State, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> UsageOut:
    rt = _rt(state)
    tenant = await rt.store.get_tenant(TenantId(tenant_id))
    now = dt.datetime.now(dt.UTC)
    until = until or now
    since = since or month_start(now)
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidRequestError("`since` and `until` need a time zone (e.g. `Z`).", param="since")
    summary = await usage_summary(rt.pool, tenant.id, since, until)
    quotas = await quota_remaining(rt.limiter, configured_levels(tenant.id, tenant.quota))
    return msgspec.structs.replace(summary, quotas=quotas)


admin_router = Router(
    path="/admin",
    guards=[require_admin],
    security=ADMIN_SECURITY,
    route_handlers=[
        create_tenant,
        list_tenants,
        get_tenant,
        patch_tenant,
        delete_tenant,
        create_key,
        list_keys,
        revoke_key,
        roll_key,
        get_quota,
        put_quota,
        tenant_usage,
    ],
    tags=["admin"],
)
