"""No secret leaves `sluice serve` by any channel an operator or a tenant can read (RELIABILITY T32, acceptance 4).

One gateway at DEBUG serves three tenants and eleven keys a few hundred requests: successes, streams,
auth failures of every kind, 429s, upstream 5xx, broken and cancelled streams. Afterwards every
table row, log line, `/metrics` line, response (status, headers, body), Redis key and value and file
the process wrote is searched for key material, digests, the admin token, the pepper and the
upstream provider key. Only a key's public prefix may appear.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN_TOKEN, PEPPER, UPSTREAM_KEY, config_toml
from tests.processes import ServeProcess, serve_processes

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PEPPER_SECRET = PEPPER.partition(":")[2]
# A key's prefix followed by its separator and any secret character: the public prefix alone may appear.
KEY_MATERIAL = re.compile(r"sk-sluice-[a-z2-7]+_[0-9A-Za-z]")
WINDOW = 12
"""Secrets are searched for by 12-character windows, so a fragment of 23 characters or more is caught."""


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def _forged(prefix: str) -> str:
    """A well-formed key with a valid checksum for a real prefix and a secret nobody issued."""
    head = f"sk-sluice-{prefix}_{''.join(secrets.choice(BASE62) for _ in range(43))}"
    return head + _base62(zlib.crc32(head.encode()), 6)


def _typo(key: str) -> str:
    return key[:-1] + ("0" if key[-1] != "0" else "1")


def _secret_needles(token: str) -> set[str]:
    secret = token.partition("_")[2]
    windows = {secret[i : i + WINDOW] for i in range(0, len(secret) - WINDOW + 1, WINDOW)}
    return {token, secret, secret[-WINDOW:], *windows}


def _digest_needles(secret: str) -> set[str]:
    digest = hmac.new(PEPPER_SECRET.encode(), secret.encode(), hashlib.sha256).digest()
    encodings = {digest.hex(), base64.b64encode(digest).decode(), base64.urlsafe_b64encode(digest).decode()}
    return encodings | {value.rstrip("=") for value in encodings}


def _response_text(response: httpx.Response, body: bytes) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
    return f"{response.status_code} {response.reason_phrase}\n{headers}\n\n{body.decode(errors='replace')}"


class Traffic:
    """Sends requests with bounded concurrency and keeps every response a client received."""

    def __init__(self, client: httpx.AsyncClient, proc: ServeProcess) -> None:
        self.client = client
        self.proc = proc
        self.seen: list[str] = []
        self.statuses: list[int] = []
        self.presented: set[str] = set()
        self._slots = asyncio.Semaphore(16)

    async def send(self, method: str, path: str, token: str | None = None, json: Any = None) -> httpx.Response:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        if token is not None and token.startswith("sk-sluice-"):
            self.presented.add(token)
        async with self._slots:
            response = await self.client.request(method, f"{self.proc.base}{path}", json=json, headers=headers)
        self.seen.append(_response_text(response, response.content))
        self.statuses.append(response.status_code)
        return response

    async def chat(self, key: str | None, model: str = "small", *, stream: bool = False) -> httpx.Response:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"hi {secrets.token_hex(4)}"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return await self.send("POST", "/v1/chat/completions", key, body)

    async def cancelled_stream(self, key: str, model: str) -> None:
        """Start a stream, read its first bytes, and hang up."""
        self.presented.add(key)
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "cancel me"}]}
        headers = {"authorization": f"Bearer {key}"}
        async with (
            self._slots,
            self.client.stream("POST", f"{self.proc.base}/v1/chat/completions", json=body, headers=headers) as response,
        ):
            first = b""
            async for chunk in response.aiter_raw():
                first = chunk
                break
        self.seen.append(_response_text(response, first))
        self.statuses.append(response.status_code)


async def _gather(calls: list[Awaitable[Any]]) -> None:
    await asyncio.gather(*calls)


async def _admin_json(traffic: Traffic, method: str, path: str, body: Any = None, *, issues_key: bool = False) -> Any:
    """An admin call; responses that issue a key are the one place a key may appear, so they are not kept."""
    response = await traffic.client.request(method, f"{traffic.proc.base}{path}", json=body, headers=ADMIN)
    assert response.status_code < 300, response.text
    if not issues_key:
        traffic.seen.append(_response_text(response, response.content))
    return response.json()


async def _metrics_when_idle(client: httpx.AsyncClient, proc: ServeProcess, deadline_s: float = 15.0) -> str:
    """`/metrics` once no request is in flight (the cancelled streams have been accounted)."""
    deadline = time.monotonic() + deadline_s
    while True:
        text = (await client.get(f"{proc.base}/metrics")).text
        inflight = re.search(r"^sluice_inflight_requests (\S+)$", text, re.MULTILINE)
        if (inflight is not None and float(inflight[1]) == 0) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.1)


async def _table_rows(database_url: str) -> dict[str, list[str]]:
    """Every row of every table in `public` as text; `api_keys` without its `digest` column."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            """
            SELECT quote_ident(c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1
            """
        )
        rows: dict[str, list[str]] = {}
        for table in tables:
            name = table["name"]
            query = (
                "SELECT (to_jsonb(t) - 'digest')::text FROM api_keys t"
                if name == "api_keys"
                else f"SELECT t::text FROM {name} t"  # name quoted by quote_ident above
            )
            rows[name] = [row[0] for row in await conn.fetch(query)]
        return rows
    finally:
        await conn.close()


async def _stored_digests(database_url: str) -> dict[str, bytes]:
    conn = await asyncpg.connect(database_url)
    try:
        return {row["prefix"]: bytes(row["digest"]) for row in await conn.fetch("SELECT prefix, digest FROM api_keys")}
    finally:
        await conn.close()


async def _redis_dump(redis_url: str) -> list[str]:
    """Every key and every value in this test's Redis database (SCAN, then a read fitting each key's type)."""
    readers: dict[str, Callable[[aioredis.Redis, bytes], Awaitable[Any]]] = {
        "string": lambda r, k: r.get(k),
        "hash": lambda r, k: r.hgetall(k),
        "list": lambda r, k: r.lrange(k, 0, -1),
        "set": lambda r, k: r.smembers(k),
        "zset": lambda r, k: r.zrange(k, 0, -1, withscores=True),
        "stream": lambda r, k: r.xrange(k),
    }
    dump: list[str] = []
    async with aioredis.Redis.from_url(redis_url) as client:
        async for key in client.scan_iter(count=1000):
            raw_kind = await client.type(key)
            kind = raw_kind.decode() if isinstance(raw_kind, bytes) else raw_kind
            value = await readers[kind](client, key) if kind in readers else f"<unread type {kind}>"
            dump.append(f"{key!r} {kind} {value!r}")
    return dump


async def _serve_traffic(
    traffic: Traffic, issued: dict[str, list[str]], revoked_key: str, tenant_ids: list[str]
) -> None:
    alpha, beta, gamma = issued["alpha"], issued["beta"], issued["gamma"]
    live = alpha + beta + gamma
    calls: list[Awaitable[Any]] = []
    for key in alpha + gamma:
        calls += [traffic.chat(key) for _ in range(10)]
        calls += [traffic.chat(key, stream=True) for _ in range(5)]
    for key in beta:  # beta may make 5 requests a minute: the other 25 are refused with 429
        calls += [traffic.chat(key) for _ in range(10)]
    for i, model in enumerate(["fake-500"] * 15 + ["fake-503"] * 10 + ["fake-401", "fake-429", "fake-400"] * 3):
        calls.append(traffic.chat(alpha[i % len(alpha)], model))
    calls += [traffic.chat(alpha[0], "fake-broken-stream", stream=True) for _ in range(3)]
    calls += [traffic.chat(alpha[1], "fake-error-stream", stream=True) for _ in range(3)]
    for key in live:
        prefix = key.partition("_")[0].removeprefix("sk-sluice-")
        calls += [traffic.chat(_forged(prefix)), traffic.chat(_typo(key)), traffic.chat(key[:-1])]
        calls += [traffic.send("GET", "/v1/models", key), traffic.send("GET", "/v1/usage", key)]
        calls.append(traffic.send("GET", f"/admin/tenants/{tenant_ids[0]}/usage", key))
    calls += [traffic.chat(revoked_key) for _ in range(5)]
    calls += [traffic.chat(f"sk-sluice-{'a' * 10}_{secrets.token_hex(20)}") for _ in range(5)]
    calls += [traffic.chat(None) for _ in range(5)]
    calls += [traffic.chat(ADMIN_TOKEN) for _ in range(5)]
    calls += [traffic.cancelled_stream(alpha[2], "fake-stall-stream") for _ in range(3)]
    calls += [traffic.cancelled_stream(gamma[0], "small") for _ in range(2)]
    await _gather(calls)


def _leaks(haystacks: dict[str, str], needles: dict[str, str]) -> list[str]:
    found = []
    for where, text in haystacks.items():
        lowered = text.lower()
        found += [f"{what} in {where}" for needle, what in needles.items() if needle.lower() in lowered]
        found += [f"key material {m[0]!r}… in {where}" for m in KEY_MATERIAL.finditer(text)]
    return found


async def test_no_key_digest_token_pepper_or_provider_key_appears_in_any_output(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    env = {"SLUICE_LOG_LEVEL": "DEBUG", "SLUICE_LEDGER_FLUSH_INTERVAL_S": "0.05", "SLUICE_DRAIN_TIMEOUT_S": "10"}
    async with FakeUpstream() as fake:
        with serve_processes(
            tmp_path, config_toml(fake.base_url), database_url=database_url, redis_url=redis_url, extra_env=env
        ) as (proc,):
            async with httpx.AsyncClient(timeout=30) as client:
                traffic = Traffic(client, proc)
                issued: dict[str, list[str]] = {}
                tenant_ids = []
                revoked_key = ""
                for name, quota, count in (("alpha", {}, 4), ("beta", {"rpm": 5}, 3), ("gamma", {}, 3)):
                    tenant = await _admin_json(traffic, "POST", "/admin/tenants", {"name": name, "quota": quota})
                    tenant_ids.append(tenant["id"])
                    made = [
                        await _admin_json(traffic, "POST", f"/admin/tenants/{tenant['id']}/keys", {}, issues_key=True)
                        for _ in range(count)
                    ]
                    issued[name] = [key["key"] for key in made]
                    if name == "alpha":  # the fifth alpha key replaces the first, which stays valid 10 minutes
                        rolled = await _admin_json(
                            traffic, "POST", f"/admin/keys/{made[0]['id']}/roll", {"overlap_s": 600}, issues_key=True
                        )
                        issued[name].append(rolled["key"])
                    if name == "gamma":
                        await _admin_json(traffic, "DELETE", f"/admin/keys/{made[0]['id']}")
                        revoked_key = issued[name].pop(0)
                for tenant_id in tenant_ids:
                    await _admin_json(traffic, "GET", f"/admin/tenants/{tenant_id}/keys")
                    await _admin_json(traffic, "GET", f"/admin/tenants/{tenant_id}/usage")
                await _admin_json(traffic, "GET", "/admin/tenants")
                await _serve_traffic(traffic, issued, revoked_key, tenant_ids)
                metrics = await _metrics_when_idle(client, proc)
                traffic.seen.append(metrics)
        # The process has drained and exited: its logs are complete and the ledger is flushed.
    all_keys = [*issued["alpha"], *issued["beta"], *issued["gamma"], revoked_key]
    stored = await _stored_digests(database_url)
    assert {key.partition("_")[0].removeprefix("sk-sluice-") for key in all_keys} <= set(stored)
    needles: dict[str, str] = {ADMIN_TOKEN: "admin token", PEPPER_SECRET: "pepper", UPSTREAM_KEY: "upstream key"}
    for token in traffic.presented | set(all_keys):
        needles |= {needle: "key or secret fragment" for needle in _secret_needles(token)}
    for key in all_keys:
        secret = key.partition("_")[2]
        prefix = key.partition("_")[0].removeprefix("sk-sluice-")
        assert hmac.new(PEPPER_SECRET.encode(), secret.encode(), hashlib.sha256).digest() == stored[prefix]
        needles |= {needle: "key digest" for needle in _digest_needles(secret)}

    rows = await _table_rows(database_url)
    files = {
        str(path.relative_to(tmp_path)): path.read_text(errors="replace")
        for path in tmp_path.rglob("*")
        if path.is_file() and path.name != "sluice.toml"
    }
    haystacks = {
        **{f"table {name}": "\n".join(values) for name, values in rows.items()},
        **{f"file {name}": text for name, text in files.items()},
        "responses": "\n".join(traffic.seen),
        "redis": "\n".join(await _redis_dump(redis_url)),
    }

    statuses = set(traffic.statuses)
    assert {200, 401, 429, 502} <= statuses, statuses  # every kind of outcome was exercised
    assert len(traffic.statuses) >= 250
    assert len(rows["usage_records"]) >= 100  # the ledger was written, so the scan covers it
    assert haystacks["redis"]  # quota windows and the auth epoch live there
    logs = files[proc.stdout_path.name] + files[proc.stderr_path.name]
    assert any(
        key.partition("_")[0].removeprefix("sk-sluice-") in logs for key in all_keys
    )  # request lines name the public prefix
    assert any(record["headers"].get("Authorization") == f"Bearer {UPSTREAM_KEY}" for record in fake.requests)
    assert _leaks(haystacks, needles) == []
