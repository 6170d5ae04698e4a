"""The admin API over HTTP: key roll, who may call it, tenant isolation, and no mass assignment (T25, T27d, T31)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_TOKEN, Gateway

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
DAY = dt.timedelta(days=1)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def expiry(payload: dict[str, Any]) -> dt.datetime | None:
    value = payload["expires_at"]
    return None if value is None else dt.datetime.fromisoformat(value)


async def tenant_status(gateway: Gateway, key: str) -> int:
    """What a tenant request with `key` gets: 200 while the key is valid, 401 after."""
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=bearer(key)) as client:
        return (await client.get("/models")).status_code


async def keys_of(gateway: Gateway, tenant_id: str) -> list[dict[str, Any]]:
    response = await gateway.admin.get(f"/admin/tenants/{tenant_id}/keys")
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()["data"]
    return keys


# --- key roll ----------------------------------------------------------------------------------


async def test_roll_issues_a_new_key_for_the_same_tenant_shown_once(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    response = await gateway.admin.post(f"/admin/keys/{old['id']}/roll", json={"overlap_s": 600})
    assert response.status_code == 201, response.text
    rolled = response.json()
    assert rolled["id"] != old["id"]
    assert rolled["tenant_id"] == tenant["id"]
    assert rolled["key"].startswith(f"sk-sluice-{rolled['prefix']}_")
    assert rolled["prefix"] != old["prefix"]
    assert rolled["expires_at"] is None
    assert rolled["old_key"]["id"] == old["id"]
    assert "key" not in rolled["old_key"]
    listed = (await gateway.admin.get(f"/admin/tenants/{tenant['id']}/keys")).text
    assert rolled["key"] not in listed
    assert rolled["key"].split("_")[1] not in listed


async def test_roll_sets_the_old_keys_expiry_to_now_plus_the_overlap(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    before = dt.datetime.now(dt.UTC)
    response = await gateway.admin.post(f"/admin/keys/{old['id']}/roll", json={"overlap_s": 600})
    after = dt.datetime.now(dt.UTC)
    expires_at = expiry(response.json()["old_key"])
    assert expires_at is not None
    assert before + dt.timedelta(seconds=599) <= expires_at <= after + dt.timedelta(seconds=601)
    listed = {key["id"]: key for key in await keys_of(gateway, tenant["id"])}
    assert expiry(listed[old["id"]]) == expires_at


async def test_roll_without_a_body_gives_the_old_key_one_day(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    before = dt.datetime.now(dt.UTC)
    response = await gateway.admin.post(f"/admin/keys/{old['id']}/roll")
    assert response.status_code == 201, response.text
    expires_at = expiry(response.json()["old_key"])
    assert expires_at is not None
    assert (
        before + DAY - dt.timedelta(seconds=1) <= expires_at <= dt.datetime.now(dt.UTC) + DAY + dt.timedelta(seconds=1)
    )


async def test_roll_never_extends_an_earlier_expiry(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)).replace(microsecond=0)
    created = await gateway.admin.post(f"/admin/tenants/{tenant['id']}/keys", json={"expires_at": soon.isoformat()})
    assert created.status_code == 201, created.text
    response = await gateway.admin.post(f"/admin/keys/{created.json()['id']}/roll", json={"overlap_s": 86_400})
    assert response.status_code == 201, response.text
    assert expiry(response.json()["old_key"]) == soon


async def test_rolled_and_old_key_both_authenticate_during_the_overlap(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    assert await tenant_status(gateway, old["key"]) == 200  # cached before the roll
    rolled = (await gateway.admin.post(f"/admin/keys/{old['id']}/roll", json={"overlap_s": 600})).json()
    assert (await tenant_status(gateway, old["key"]), await tenant_status(gateway, rolled["key"])) == (200, 200)


async def test_roll_with_zero_overlap_refuses_the_old_key_at_once(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    assert await tenant_status(gateway, old["key"]) == 200  # cached before the roll
    rolled = (await gateway.admin.post(f"/admin/keys/{old['id']}/roll", json={"overlap_s": 0})).json()
    assert (await tenant_status(gateway, old["key"]), await tenant_status(gateway, rolled["key"])) == (401, 200)


@pytest.mark.parametrize("kind", ["unknown-uuid", "malformed", "tenant-id", "path-traversal"])
async def test_roll_answers_404_for_an_id_that_is_not_a_key(gateway: Gateway, kind: str) -> None:
    tenant = await gateway.create_tenant()
    await gateway.create_key(tenant["id"])
    key_id = {
        "unknown-uuid": str(uuid.uuid4()),
        "malformed": "not-a-uuid",
        "tenant-id": tenant["id"],
        "path-traversal": "..%2F..%2Ftenants",
    }[kind]
    response = await gateway.admin.post(f"/admin/keys/{key_id}/roll", json={"overlap_s": 60})
    assert assert_openai_error(response, 404)["code"] == "not_found"
    assert len(await keys_of(gateway, tenant["id"])) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"overlap_s": -1},
        {"overlap_s": 10**12},
        {"overlap_s": "24h"},
        {"overlap_s": 1.5},
        {"overlap_s": 60, "tenant_id": "x"},
    ],
    ids=["negative", "beyond-a-year", "string", "fraction", "unknown-field"],
)
async def test_roll_with_an_invalid_body_is_400_and_changes_nothing(gateway: Gateway, body: dict[str, Any]) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    response = await gateway.admin.post(f"/admin/keys/{old['id']}/roll", json=body)
    assert_openai_error(response, 400)
    keys = await keys_of(gateway, tenant["id"])
    assert [(key["id"], key["expires_at"]) for key in keys] == [(old["id"], None)]


async def test_roll_of_a_revoked_key_is_400_and_issues_nothing(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    old = await gateway.create_key(tenant["id"])
    assert (await gateway.admin.delete(f"/admin/keys/{old['id']}")).status_code == 200
    response = await gateway.admin.post(f"/admin/keys/{old['id']}/roll", json={"overlap_s": 60})
    assert assert_openai_error(response, 400)["code"] == "key_revoked"
    assert [key["id"] for key in await keys_of(gateway, tenant["id"])] == [old["id"]]


# --- who may call what -------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["missing", "wrong-token", "tenant-key", "admin-token-as-basic", "token-prefix"])
async def test_admin_routes_refuse_anything_but_the_admin_token_with_401(gateway: Gateway, credential: str) -> None:
    tenant_id, key = await gateway.tenant_key()
    key_id = (await keys_of(gateway, tenant_id))[0]["id"]
    headers = {
        "missing": {},
        "wrong-token": bearer("not-the-admin-token"),
        "tenant-key": bearer(key),
        "admin-token-as-basic": {"authorization": f"Basic {ADMIN_TOKEN}"},
        "token-prefix": bearer(ADMIN_TOKEN[:-1]),
    }[credential]
    requests = [
        ("GET", "/admin/tenants"),
        ("POST", "/admin/tenants"),
        ("GET", f"/admin/tenants/{tenant_id}"),
        ("PATCH", f"/admin/tenants/{tenant_id}"),
        ("DELETE", f"/admin/tenants/{tenant_id}"),
        ("GET", f"/admin/tenants/{tenant_id}/usage"),
        ("PUT", f"/admin/tenants/{tenant_id}/quota"),
        ("POST", f"/admin/tenants/{tenant_id}/keys"),
        ("POST", f"/admin/keys/{key_id}/roll"),
        ("DELETE", f"/admin/keys/{key_id}"),
    ]
    async with httpx.AsyncClient(base_url=gateway.base, headers=headers) as client:
        for method, path in requests:
            body = {"name": "x"} if method in ("POST", "PATCH", "PUT") else None
            response = await client.request(method, path, json=body)
            assert_openai_error(response, 401)
    assert [k["revoked_at"] for k in await keys_of(gateway, tenant_id)] == [None]  # nothing changed
    assert await tenant_status(gateway, key) == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/usage")],
    ids=["chat", "models", "usage"],
)
async def test_admin_token_is_refused_on_tenant_routes_with_401(gateway: Gateway, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.base, headers=bearer(ADMIN_TOKEN)) as client:
        response = await client.request(method, path, json=BODY if method == "POST" else None)
    assert assert_openai_error(response, 401)["code"] == "invalid_api_key"


# --- tenant isolation --------------------------------------------------------------------------


async def test_tenant_key_cannot_read_another_tenants_usage_through_admin(gateway: Gateway) -> None:
    _, key_a = await gateway.tenant_key("a")
    tenant_b, _ = await gateway.tenant_key("b")
    async with httpx.AsyncClient(base_url=gateway.base, headers=bearer(key_a)) as client:
        response = await client.get(f"/admin/tenants/{tenant_b}/usage")
    assert_openai_error(response, 401)


async def _chat(gateway: Gateway, key: str, times: int) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=bearer(key)) as client:
        for _ in range(times):
            assert (await client.post("/chat/completions", json=BODY)).status_code == 200


@pytest.mark.parametrize("query", ["", "?tenant_id={other}", "?tenant={other}&since=2000-01-01T00:00:00Z"])
async def test_own_usage_shows_only_the_calling_tenants_rows(gateway: Gateway, query: str) -> None:
    tenant_a, key_a = await gateway.tenant_key("a")
    tenant_b, key_b = await gateway.tenant_key("b")
    await _chat(gateway, key_a, 2)
    await _chat(gateway, key_b, 3)
    await gateway.flush_ledger()
    for tenant_id, key, other, requests in ((tenant_a, key_a, tenant_b, 2), (tenant_b, key_b, tenant_a, 3)):
        async with httpx.AsyncClient(base_url=gateway.base_url, headers=bearer(key)) as client:
            usage = (await client.get("/usage" + query.format(other=other))).json()
        assert usage["tenant_id"] == tenant_id
        assert usage["requests"] == requests
        assert [row["requests"] for row in usage["by_model"]] == [requests]


async def test_key_list_of_a_tenant_never_contains_another_tenants_keys(gateway: Gateway) -> None:
    tenant_a, _ = await gateway.tenant_key("a")
    tenant_b, _ = await gateway.tenant_key("b")
    await gateway.create_key(tenant_b)
    keys_a, keys_b = await keys_of(gateway, tenant_a), await keys_of(gateway, tenant_b)
    assert {key["tenant_id"] for key in keys_a} == {tenant_a}
    assert {key["tenant_id"] for key in keys_b} == {tenant_b}
    assert len(keys_a) == 1 and len(keys_b) == 2


TENANT_ROUTES = [
    ("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/keys"), ("POST", "/keys"), ("GET", "/quota"),
    ("PUT", "/quota"), ("GET", "/usage"),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["key-id", "unknown-uuid", "malformed", "deleted-tenant"])
async def test_tenant_routes_answer_404_for_an_id_that_is_no_tenant(gateway: Gateway, kind: str) -> None:
    tenant_id, _ = await gateway.tenant_key("a")
    key_id = (await keys_of(gateway, tenant_id))[0]["id"]
    gone, _ = await gateway.tenant_key("gone")
    assert (await gateway.admin.delete(f"/admin/tenants/{gone}")).status_code == 204
    other_id = {"key-id": key_id, "unknown-uuid": str(uuid.uuid4()), "malformed": "1 OR 1=1", "deleted-tenant": gone}
    for method, suffix in TENANT_ROUTES:
        body = ({"name": "x"} if suffix == "" else {}) if method in ("PATCH", "POST", "PUT") else None
        response = await gateway.admin.request(method, f"/admin/tenants/{other_id[kind]}{suffix}", json=body)
        assert assert_openai_error(response, 404)["code"] == "not_found", (method, suffix)
    assert [key["id"] for key in await keys_of(gateway, tenant_id)] == [key_id]


# --- no mass assignment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        ("id", "00000000-0000-0000-0000-000000000001"),
        ("created_at", "2000-01-01T00:00:00Z"),
        ("spent_usd", "0"),
        ("quota", {"rpm": 1}),
        ("tenant_id", "00000000-0000-0000-0000-000000000001"),
    ],
    ids=lambda field: field[0],
)
async def test_patch_with_a_field_beyond_name_is_400_and_leaves_the_tenant_unchanged(
    gateway: Gateway, field: tuple[str, Any]
) -> None:
    tenant = await gateway.create_tenant("before", rpm=100)
    name, value = field
    response = await gateway.admin.patch(f"/admin/tenants/{tenant['id']}", json={"name": "after", name: value})
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert (await gateway.admin.get(f"/admin/tenants/{tenant['id']}")).json() == tenant


@pytest.mark.parametrize("name", ["\u0000\U000898a2", "a\u0000b", "\u0000"])
async def test_a_tenant_name_with_nul_is_400_and_creates_or_renames_nothing(gateway: Gateway, name: str) -> None:
    """Found by Schemathesis (T20): a NUL in the name reached Postgres, which refuses it in text, and was a 500."""
    before = (await gateway.admin.get("/admin/tenants")).json()
    error = assert_openai_error(await gateway.admin.post("/admin/tenants", json={"name": name}), 400)
    assert "must not contain NUL" in error["message"]
    assert (await gateway.admin.get("/admin/tenants")).json() == before
    tenant = await gateway.create_tenant("unchanged")
    assert_openai_error(await gateway.admin.patch(f"/admin/tenants/{tenant['id']}", json={"name": name}), 400)
    assert (await gateway.admin.get(f"/admin/tenants/{tenant['id']}")).json() == tenant


@pytest.mark.parametrize(
    "quota",
    [{"models": {"gpt\u0000": {"rpm": 1}}}, {"keys": {"\u0000": {"rpm": 1}}}],
    ids=["model-name", "key-name"],
)
async def test_a_quota_naming_a_model_or_key_with_nul_is_400_and_changes_nothing(
    gateway: Gateway, quota: dict[str, Any]
) -> None:
    """Postgres refuses NUL in jsonb: found while probing T20's failure, it was a 500 on both routes."""
    tenant = await gateway.create_tenant("quota-nul", rpm=5)
    before = (await gateway.admin.get(f"/admin/tenants/{tenant['id']}/quota")).json()
    error = assert_openai_error(await gateway.admin.put(f"/admin/tenants/{tenant['id']}/quota", json=quota), 400)
    assert error["param"] in {"models", "keys"} and "NUL" in error["message"]
    assert (await gateway.admin.get(f"/admin/tenants/{tenant['id']}/quota")).json() == before
    assert_openai_error(await gateway.admin.post("/admin/tenants", json={"name": "new", "quota": quota}), 400)
