"""T24 and T26: header, label and SQL injection — nothing a client sends is reflected, labelled or executed."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest

from tests.harness import ADMIN_TOKEN, Gateway, file_config, running_gateway
from tests.servers import Servers, flushed_redis_url, fresh_database

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
CHAT = "/v1/chat/completions"


@pytest.fixture(name="shared_gateway", scope="module")
async def fx_shared_gateway(servers: Servers, database_template: str) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway and tenant key for the tests that only send requests: they cannot disturb each other."""
    async with (
        fresh_database(servers, database_template) as database_url,
        running_gateway(database_url, flushed_redis_url(servers), file_config()) as gateway,
    ):
        _, key = await gateway.tenant_key()
        yield gateway, key


def _client(gateway: Gateway, headers: dict[str, str] | dict[bytes, bytes] | None = None) -> httpx.AsyncClient:
    """A client that opens a connection per request: the harness's keep-alive connections each wait ~40 ms
    on delayed ACKs (its listening socket is made without IPPROTO_TCP, so asyncio leaves Nagle on)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=gateway.base, headers=headers, limits=limits, timeout=30)


def _chat_body(model: str = "small", user: str = "u") -> bytes:
    return msgspec.json.encode({"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]})


def _raw_request(key: str, header_lines: bytes, body: bytes) -> bytes:
    head = (
        f"POST {CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    )
    return head.encode() + header_lines + b"\r\n" + body


async def _raw_response(gateway: Gateway, request: bytes, timeout: float = 10) -> bytes:
    """Everything the server answers to `request` on a new connection, up to the end of the first response."""
    host, port = gateway.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1)) if length else 0), timeout)
        return head + body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# --- T24: headers --------------------------------------------------------------------------------

MALFORMED_HEADER_LINES = {
    "cr-in-value": b"x-request-id: abc\rset-cookie: evil=1\r\n",
    "lf-in-value": b"x-request-id: abc\nset-cookie: evil=1\r\n",
    "crlf-folded-continuation": b"x-request-id: abc\r\n set-cookie: evil=1\r\n",
    "nul-in-value": b"x-request-id: ab\x00c\r\n",
    "nul-in-name": b"x-request\x00-id: abc\r\n",
    "space-before-colon": b"x-request-id : abc\r\n",
}


@pytest.mark.parametrize("line", MALFORMED_HEADER_LINES.values(), ids=MALFORMED_HEADER_LINES.keys())
async def test_header_with_cr_lf_or_nul_gets_400_and_is_not_reflected(
    shared_gateway: tuple[Gateway, str], line: bytes
) -> None:
    gateway, key = shared_gateway
    response = await _raw_response(gateway, _raw_request(key, line, _chat_body()))
    assert _status(response) == 400
    assert b"evil" not in response
    assert b"abc" not in response


async def test_long_inbound_request_id_is_replaced_by_a_minted_one(shared_gateway: tuple[Gateway, str]) -> None:
    gateway, key = shared_gateway
    inbound = "r" * 10_000
    async with _client(gateway, {"authorization": f"Bearer {key}"}) as client:
        response = await client.post(CHAT, content=_chat_body(), headers={"x-request-id": inbound})
    assert response.status_code == 200
    assert UUID_RE.match(response.headers["x-request-id"])


@pytest.mark.parametrize("model", ["small", "unknown"], ids=["served", "refused"])
async def test_no_response_header_echoes_client_input(shared_gateway: tuple[Gateway, str], model: str) -> None:
    """A marker in every header a proxy might reflect, and in the body, appears in no response header."""
    gateway, key = shared_gateway
    marker = f"zq{secrets.token_hex(6)}"
    reflected = [
        "x-request-id", "x-correlation-id", "traceparent", "x-sluice-model", "x-sluice-route", "x-sluice-cache",
        "x-sluice-cost-usd", "x-ratelimit-limit-requests", "set-cookie", "cookie", "user-agent", "referer", "origin",
        "x-forwarded-for", "x-forwarded-host", "x-real-ip", "accept-language", "x-openai-organization",
    ]  # fmt: skip
    headers = {name: marker for name in reflected} | {"authorization": f"Bearer {key}"}
    body = _chat_body(model=model if model == "small" else f"{model}-{marker}", user=marker)
    async with _client(gateway) as client:
        response = await client.post(CHAT, content=body, headers=headers)
    assert response.status_code in (200, 404)
    for name, value in response.headers.raw:
        assert marker.encode() not in name + value, (name, value)


async def test_10000_junk_model_names_add_at_most_one_requests_total_series(gateway: Gateway) -> None:
    """Unknown model names are labelled `other`: a client cannot mint metric series."""
    _, key = await gateway.tenant_key()

    async def series() -> set[str]:
        async with _client(gateway) as client:
            text = (await client.get("/metrics")).text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("sluice_requests_total{")}

    before = await series()
    names = [f'junk-{i}-{secrets.token_hex(4)} "\\ \n{{}}\x1b[31m' for i in range(10_000)]
    requests = [_raw_request(key, b"", _chat_body(model=name)) for name in names]
    statuses = await asyncio.gather(*(_pipelined(gateway, requests[i::8]) for i in range(8)))
    assert {status for batch in statuses for status in batch} == {404}
    after = await series()
    assert len(after - before) <= 1
    assert all('model="other"' in line for line in after - before)


async def _pipelined(gateway: Gateway, requests: list[bytes]) -> list[int]:
    """Send `requests` back to back on one connection (HTTP/1.1 pipelining) and read every status."""
    host, port = gateway.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def send() -> None:
        for request in requests:
            writer.write(request)
            await writer.drain()

    statuses: list[int] = []
    async with asyncio.TaskGroup() as group:
        group.create_task(send())
        for _ in requests:
            head = await reader.readuntil(b"\r\n\r\n")
            statuses.append(_status(head))
            length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
    writer.close()
    await writer.wait_closed()
    return statuses


# --- T26: SQL injection in auth and admin ---------------------------------------------------------

INJECTED_KEYS: dict[str, str | bytes] = {
    "sql-or": "' OR '1'='1",
    "sql-comment-in-key-shape": "sk-sluice-x'--_y",
    "sql-in-prefix": "sk-sluice-a' OR 1=1_" + "A" * 49,
    "8kb-key": "sk-sluice-" + "a" * 8192,
    "8kb-garbage": "'" * 8192,
    "unicode-key": "sk-sluice-ключ_секрет".encode(),
    "fullwidth-key-of-valid-length": ("sk-sluice-" + "ａ" * 10 + "_" + "Ａ" * 49).encode(),
    "admin-token-with-sql": f"{ADMIN_TOKEN}' OR '1'='1",
}


def _bearer(token: str | bytes) -> dict[bytes, bytes]:
    return {b"authorization": b"Bearer " + (token if isinstance(token, bytes) else token.encode())}


ROUTES = [("POST", CHAT), ("GET", "/v1/models"), ("GET", "/v1/usage"), ("GET", "/admin/tenants")]


@pytest.mark.parametrize("token", INJECTED_KEYS.values(), ids=INJECTED_KEYS.keys())
async def test_injected_bearer_token_gets_401_on_every_route(
    shared_gateway: tuple[Gateway, str], token: str | bytes
) -> None:
    gateway, _ = shared_gateway
    async with _client(gateway, _bearer(token)) as client:
        for method, path in ROUTES:
            response = await client.request(method, path, content=_chat_body() if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_injected_bearer_tokens_authenticate_no_tenant(gateway: Gateway) -> None:
    """Every request counted after the attempts is an unauthenticated `auth` refusal (tenant `other`)."""
    await gateway.tenant_key()  # a tenant that an injection could try to reach
    async with _client(gateway) as client:
        for token in INJECTED_KEYS.values():
            response = await client.post(CHAT, content=_chat_body(), headers=_bearer(token))
            assert response.status_code == 401
        metrics = (await client.get("/metrics")).text
    counted = [line for line in metrics.splitlines() if line.startswith("sluice_requests_total{")]
    assert counted
    assert all('tenant="other"' in line and 'outcome="auth"' in line for line in counted), counted


TENANT_NAMES = {
    "single-quote": "O'Brien",
    "sql-statement": "x'); DROP TABLE tenants; --",
    "quote-and-backslash": 'say "hi" \\ \\\\ \\x00 \\u0000',
    "dollar-param": "$1 $2::text",
    "percent-encoded": "%27%20OR%201%3D1",
    "unicode": "名前 🚀 Ünïcødé",
    "nfc-and-nfd": "\u00e9 e\u0301",
    "bidi-override": "\u202eevil\u202c",
    "control-whitespace": "tab\there\nnew line",
}


@pytest.mark.parametrize("name", TENANT_NAMES.values(), ids=TENANT_NAMES.keys())
async def test_tenant_name_round_trips_byte_exact_through_the_admin_api(
    shared_gateway: tuple[Gateway, str], name: str
) -> None:
    gateway, _ = shared_gateway
    created = await gateway.admin.post("/admin/tenants", json={"name": name})
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    read = await gateway.admin.get(f"/admin/tenants/{tenant_id}")
    listed = await gateway.admin.get("/admin/tenants")
    names = [msgspec.json.decode(created.content)["name"], msgspec.json.decode(read.content)["name"]]
    names += [t["name"] for t in msgspec.json.decode(listed.content)["data"] if t["id"] == tenant_id]
    assert [n.encode() for n in names] == [name.encode()] * 3


@pytest.mark.parametrize(
    "since",
    ["1' OR 1=1", "2024-01-01T00:00:00Z' OR '1'='1", "now()", "1; DROP TABLE usage_records"],
    ids=["or-true", "valid-prefix", "sql-function", "statement"],
)
async def test_injected_usage_since_gets_400_naming_since(shared_gateway: tuple[Gateway, str], since: str) -> None:
    gateway, _ = shared_gateway
    tenant = await gateway.create_tenant("usage-since")
    response = await gateway.admin.get(f"/admin/tenants/{tenant['id']}/usage", params={"since": since})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "since"


async def _tenants_and_keys_digest(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        digest: str = await conn.fetchval(
            "SELECT md5(coalesce(string_agg(row_text, E'\\n' ORDER BY row_text), '')) FROM ("
            " SELECT 't' || t::text AS row_text FROM tenants t"
            " UNION ALL SELECT 'k' || k::text FROM api_keys k"
            " UNION ALL SELECT 'q' || q::text FROM quotas q) rows"
        )
    finally:
        await conn.close()
    return digest


async def test_injection_attempts_change_no_tenant_or_key_row(gateway: Gateway, database_url: str) -> None:
    tenant_id, _ = await gateway.tenant_key()
    before = await _tenants_and_keys_digest(database_url)
    async with _client(gateway) as client:
        for token in INJECTED_KEYS.values():
            for method, path in ROUTES:
                await client.request(method, path, headers=_bearer(token))
    await gateway.admin.get(f"/admin/tenants/{tenant_id}/usage", params={"since": "1' OR 1=1"})
    for injected_id in ("1' OR 1=1", f"{tenant_id}' OR '1'='1", "x'; DELETE FROM api_keys; --"):
        assert (await gateway.admin.get(f"/admin/tenants/{injected_id}/usage")).status_code == 404
        assert (await gateway.admin.delete(f"/admin/tenants/{injected_id}")).status_code == 404
        assert (await gateway.admin.delete(f"/admin/keys/{injected_id}")).status_code == 404
    assert await _tenants_and_keys_digest(database_url) == before
