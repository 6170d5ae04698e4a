"""Authentication on real Postgres and Redis: cheap refusals, peppered digests, and identical 401s (T28, T29).

Postgres queries are observed through asyncpg's own query logger on the store's pool, and Redis use
through `CLIENT LIST` (the authenticator's client carries a unique name): both see every round trip,
and neither replaces any of our code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
import time
import zlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tenants.auth import Authenticator
from tenants.errors import InvalidKeyError
from tenants.keys import KeyHasher, issue_key
from tenants.models import Quota
from tenants.store import TenantStore
from tests.harness import PEPPER, Gateway, file_config, running_gateway

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TEST_PEPPER = PEPPER.partition(":")[2].encode()
NEW_PEPPER = b"rotated-pepper-version-2"
BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def forged_key(prefix: str) -> str:
    """A well-formed key with a valid checksum for `prefix` but a secret nobody issued."""
    head = f"sk-sluice-{prefix}_{''.join(secrets.choice(BASE62) for _ in range(43))}"
    return head + base62(zlib.crc32(head.encode()), 6)


def with_typo(key: str) -> str:
    last = key[-1]
    return key[:-1] + ("0" if last != "0" else "1")


class QueryLog:
    """Every statement asyncpg ran on the pool's connections, in order."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.queries.append(record.query)

    async def statements(self, pool: asyncpg.Pool, deadline_s: float = 5.0) -> list[str]:
        """The statements run so far, leaving out our barriers and the pool's reset on release.

        Loggers run in query order, soon after each query: once a fresh marker query shows up,
        everything before it has been logged.
        """
        marker = f"SELECT 'barrier-{secrets.token_hex(4)}'"
        await pool.execute(marker)
        deadline = time.monotonic() + deadline_s
        while marker not in self.queries:
            assert time.monotonic() < deadline, "query logger never saw the marker"
            await asyncio.sleep(0.001)
        logged = self.queries[: self.queries.index(marker)]
        return [query for query in logged if not query.startswith("SELECT 'barrier-") and "RESET ALL" not in query]


@pytest.fixture(name="query_log")
def fx_query_log() -> QueryLog:
    return QueryLog()


@pytest.fixture(name="pool")
async def fx_pool(database_url: str, query_log: QueryLog) -> AsyncIterator[asyncpg.Pool]:
    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(query_log)

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, init=init)
    yield pool
    await pool.close()


@pytest.fixture(name="store")
def fx_store(pool: asyncpg.Pool) -> TenantStore:
    return TenantStore(pool)


@pytest.fixture(name="redis_client_name")
def fx_redis_client_name() -> str:
    return f"sluice-auth-test-{secrets.token_hex(6)}"


@pytest.fixture(name="authenticator")
async def fx_authenticator(store: TenantStore, redis_url: str, redis_client_name: str) -> AsyncIterator[Authenticator]:
    client = aioredis.Redis.from_url(redis_url, client_name=redis_client_name)
    yield Authenticator(store, KeyHasher({1: TEST_PEPPER}), client)
    await client.aclose()


@pytest.fixture(name="stored_key")
async def fx_stored_key(store: TenantStore) -> str:
    """The plaintext of a key stored for a new tenant, under the test pepper."""
    tenant = await store.create_tenant("acme", Quota())
    _, issued = await store.create_key(tenant.id, KeyHasher({1: TEST_PEPPER}))
    return issued.plaintext


@pytest.fixture(name="gateway")
async def fx_gateway(database_url: str, redis_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, redis_url, file_config()) as gateway:
        yield gateway


REFUSED_CHEAPLY = ["typo-of-a-stored-key", "truncated", "garbage", "sql-injection", "8-kib"]


def cheap_refusal(kind: str, stored_key: str) -> str:
    return {
        "typo-of-a-stored-key": with_typo(stored_key),
        "truncated": stored_key[:-1],
        "garbage": "not-a-key",
        "sql-injection": "sk-sluice-x'--_y",
        "8-kib": "sk-sluice-" + "a" * 8192,
    }[kind]


@pytest.mark.parametrize("kind", REFUSED_CHEAPLY)
async def test_malformed_or_bad_checksum_token_is_refused_without_a_postgres_query(
    kind: str, authenticator: Authenticator, pool: asyncpg.Pool, query_log: QueryLog, stored_key: str
) -> None:
    before = len(await query_log.statements(pool))
    for _ in range(20):
        with pytest.raises(InvalidKeyError):
            await authenticator.authenticate(cheap_refusal(kind, stored_key))
    assert (await query_log.statements(pool))[before:] == []


@pytest.mark.parametrize("kind", REFUSED_CHEAPLY)
async def test_malformed_or_bad_checksum_token_is_refused_without_touching_redis(
    kind: str, authenticator: Authenticator, redis_url: str, redis_client_name: str, stored_key: str
) -> None:
    for _ in range(20):
        with pytest.raises(InvalidKeyError):
            await authenticator.authenticate(cheap_refusal(kind, stored_key))
    async with aioredis.Redis.from_url(redis_url) as observer:
        clients = await observer.client_list()
    assert not [client for client in clients if client.get("name") == redis_client_name]


async def test_well_formed_unknown_key_is_looked_up_in_postgres_once_per_negative_cache_ttl(
    authenticator: Authenticator, pool: asyncpg.Pool, query_log: QueryLog
) -> None:
    token = issue_key().plaintext
    before = len(await query_log.statements(pool))
    for _ in range(20):
        with pytest.raises(InvalidKeyError):
            await authenticator.authenticate(token)
    lookups = [query for query in (await query_log.statements(pool))[before:] if "api_keys" in query]
    assert len(lookups) == 1


async def test_stored_digest_is_hmac_sha256_of_the_secret_under_the_pepper(
    store: TenantStore, pool: asyncpg.Pool
) -> None:
    tenant = await store.create_tenant("acme", Quota())
    key, issued = await store.create_key(tenant.id, KeyHasher({1: TEST_PEPPER}))
    row = await pool.fetchrow("SELECT digest, pepper_version FROM api_keys WHERE id = $1", key.id)
    assert row is not None
    assert bytes(row["digest"]) == hmac.new(TEST_PEPPER, issued.secret.encode(), hashlib.sha256).digest()
    assert row["pepper_version"] == 1


async def test_key_made_before_a_pepper_rotation_still_authenticates_after_it(
    store: TenantStore, redis_url: str, stored_key: str
) -> None:
    async with aioredis.Redis.from_url(redis_url) as client:
        rotated = Authenticator(store, KeyHasher({1: TEST_PEPPER, 2: NEW_PEPPER}), client)
        ctx = await rotated.authenticate(stored_key)
    assert ctx.key_prefix == stored_key.split("_", maxsplit=1)[0].removeprefix("sk-sluice-")


async def test_key_made_after_a_pepper_rotation_is_stored_under_the_new_version(
    store: TenantStore, pool: asyncpg.Pool
) -> None:
    tenant = await store.create_tenant("acme", Quota())
    key, issued = await store.create_key(tenant.id, KeyHasher({1: TEST_PEPPER, 2: NEW_PEPPER}))
    row = await pool.fetchrow("SELECT digest, pepper_version FROM api_keys WHERE id = $1", key.id)
    assert row is not None
    assert row["pepper_version"] == 2
    assert bytes(row["digest"]) == hmac.new(NEW_PEPPER, issued.secret.encode(), hashlib.sha256).digest()


async def test_key_whose_pepper_version_was_retired_is_refused(
    store: TenantStore, redis_url: str, stored_key: str
) -> None:
    async with aioredis.Redis.from_url(redis_url) as client:
        retired = Authenticator(store, KeyHasher({2: NEW_PEPPER}), client)
        with pytest.raises(InvalidKeyError):
            await retired.authenticate(stored_key)


async def test_unknown_prefix_and_wrong_secret_get_byte_identical_401_bodies_and_the_same_header_names(
    gateway: Gateway,
) -> None:
    _, key = await gateway.tenant_key()
    prefix = key.split("_")[0].removeprefix("sk-sluice-")
    async with httpx.AsyncClient(base_url=gateway.base_url) as client:
        unknown, wrong = [
            await client.post("/chat/completions", json=BODY, headers={"authorization": f"Bearer {token}"})
            for token in (issue_key().plaintext, forged_key(prefix))
        ]
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.content == wrong.content
    assert sorted(name for name, _ in unknown.headers.multi_items()) == sorted(
        name for name, _ in wrong.headers.multi_items()
    )


async def test_key_expiring_in_two_seconds_is_refused_by_three_seconds_although_cached(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    created = await gateway.admin.post(
        f"/admin/tenants/{tenant['id']}/keys", json={"expires_at": expires_at.isoformat()}
    )
    assert created.status_code == 201, created.text
    deadline = expires_at + dt.timedelta(seconds=1)
    headers = {"authorization": f"Bearer {created.json()['key']}"}
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers) as client:
        assert (await client.get("/models")).status_code == 200  # cached now, for far longer than 3 s
        status = 200
        while status == 200 and dt.datetime.now(dt.UTC) < deadline:
            await asyncio.sleep(0.05)
            status = (await client.get("/models")).status_code
        assert status == 401
        assert (await client.post("/chat/completions", json=BODY)).status_code == 401


async def test_revoked_key_is_refused_on_the_next_request(gateway: Gateway) -> None:
    tenant = await gateway.create_tenant()
    key = await gateway.create_key(tenant["id"])
    headers = {"authorization": f"Bearer {key['key']}"}
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers) as client:
        assert (await client.post("/chat/completions", json=BODY)).status_code == 200
        assert (await gateway.admin.delete(f"/admin/keys/{key['id']}")).status_code == 200
        refused = await client.post("/chat/completions", json=BODY)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
