"""T22: size limits hold at the boundary — body, counted fields, header count and size, compressed bodies."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from tests.harness import Gateway, file_config, running_gateway
from tests.servers import Servers, flushed_redis_url, fresh_database

SMALL_BODY_LIMIT = 100_000
MIB = 1024 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


@contextlib.asynccontextmanager
async def _module_gateway(servers: Servers, template: str, extra: str = "") -> AsyncIterator[tuple[Gateway, str]]:
    async with (
        fresh_database(servers, template) as database_url,
        running_gateway(database_url, flushed_redis_url(servers), file_config(extra=extra)) as gateway,
    ):
        _, key = await gateway.tenant_key()
        yield gateway, key


@pytest.fixture(name="default_gateway", scope="module")
async def fx_default_gateway(servers: Servers, database_template: str) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway with the default limits and a tenant key, shared by the module: no test here changes state."""
    async with _module_gateway(servers, database_template) as gateway_and_key:
        yield gateway_and_key


@pytest.fixture(name="small_gateway", scope="module")
async def fx_small_gateway(servers: Servers, database_template: str) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway whose body limit is 100 kB, so that bodies at the limit are quick to send."""
    async with _module_gateway(servers, database_template, f"[limits]\nmax_body_bytes = {SMALL_BODY_LIMIT}") as pair:
        yield pair


def _client(gateway: Gateway, key: str) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=30)


def _body_of_size(size: int) -> bytes:
    """A valid chat body of exactly `size` bytes (padded with JSON whitespace)."""
    body = b'{"model": "small", "messages": [{"role": "user", "content": "hi"}]}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def _chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _assert_openai_error(response_body: bytes, code: str) -> None:
    error = msgspec.json.decode(response_body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


async def _raw_exchange(gateway: Gateway, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as bytes on a new connection; the response's status, headers and body."""
    host, port = gateway.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _chat_request(key: str, extra_headers: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
    """A chat request on the wire and its header fields (the ones counted against the limits)."""
    body = _body_of_size(100)
    headers = [
        ("host", "127.0.0.1"),
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *extra_headers,
    ]
    head = "POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + body, headers


def _header_bytes(headers: list[tuple[str, str]]) -> int:
    return sum(len(name) + len(value) + 4 for name, value in headers)


# --- body -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_of_exactly_the_limit_is_served(small_gateway: tuple[Gateway, str], chunked: bool) -> None:
    gateway, key = small_gateway
    body = _body_of_size(SMALL_BODY_LIMIT)
    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", content=_chunks(body) if chunked else body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_one_byte_over_the_limit_gets_413(small_gateway: tuple[Gateway, str], chunked: bool) -> None:
    gateway, key = small_gateway
    body = _body_of_size(SMALL_BODY_LIMIT + 1)
    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", content=_chunks(body) if chunked else body)
    assert response.status_code == 413
    _assert_openai_error(response.content, "request_too_large")


async def test_content_length_over_the_limit_gets_413_before_the_body_is_sent(
    small_gateway: tuple[Gateway, str],
) -> None:
    gateway, key = small_gateway
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {SMALL_BODY_LIMIT + 1}\r\n\r\n"
    )
    status, _, body = await _raw_exchange(gateway, head.encode(), timeout=5)
    assert status == 413
    _assert_openai_error(body, "request_too_large")


async def test_chunked_body_streaming_far_past_the_limit_gets_413_without_being_buffered(
    default_gateway: tuple[Gateway, str],
) -> None:
    """50 MiB streamed at a 10 MB limit: refused, and the process grows by less than twice the limit."""
    gateway, key = default_gateway
    chunk = b" " * MIB
    process = psutil.Process()
    before = process.memory_info().rss

    async def fifty_mib() -> AsyncIterator[bytes]:
        yield b'{"model": "small", "messages": [{"role": "user", "content": "hi"}]'
        for _ in range(50):
            yield chunk

    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", content=fifty_mib())
    assert response.status_code == 413
    assert process.memory_info().rss - before < 2 * 10_000_000


# --- counted fields -------------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
# Each cap (RELIABILITY §5 defaults): the field, a value at the cap, and one just over it.
CAPS: list[tuple[str, Any, Any]] = [
    ("messages", [USER] * 2048, [USER] * 2049),
    ("tools", [TOOL] * 128, [TOOL] * 129),
    ("stop", ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"]),
    ("n", 8, 9),
]


@pytest.mark.parametrize(("field", "at_cap"), [(f, at) for f, at, _ in CAPS], ids=[c[0] for c in CAPS])
async def test_count_at_its_cap_is_served(default_gateway: tuple[Gateway, str], field: str, at_cap: Any) -> None:
    gateway, key = default_gateway
    body = {"model": "small", "messages": [USER], field: at_cap}
    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("field", "over_cap"), [(f, over) for f, _, over in CAPS], ids=[c[0] for c in CAPS])
async def test_count_one_over_its_cap_gets_400_naming_the_field(
    default_gateway: tuple[Gateway, str], field: str, over_cap: Any
) -> None:
    gateway, key = default_gateway
    body = {"model": "small", "messages": [USER], field: over_cap}
    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field


# --- headers --------------------------------------------------------------------------------------


def _filler_headers(key: str, count: int) -> list[tuple[str, str]]:
    """Extra `x-fill-*` fields bringing the request to `count` header fields in all."""
    _, base = _chat_request(key, [])
    return [(f"x-fill-{i}", "1") for i in range(count - len(base))]


def _padding_header(key: str, total_bytes: int) -> list[tuple[str, str]]:
    """One extra field bringing the header block to exactly `total_bytes`."""
    _, base = _chat_request(key, [("x-pad", "")])
    return [("x-pad", "a" * (total_bytes - _header_bytes(base)))]


async def test_100_header_fields_are_served(default_gateway: tuple[Gateway, str]) -> None:
    gateway, key = default_gateway
    request, headers = _chat_request(key, _filler_headers(key, MAX_HEADERS))
    assert len(headers) == MAX_HEADERS
    status, _, _ = await _raw_exchange(gateway, request)
    assert status == 200


async def test_101_header_fields_get_431(default_gateway: tuple[Gateway, str]) -> None:
    gateway, key = default_gateway
    request, headers = _chat_request(key, _filler_headers(key, MAX_HEADERS + 1))
    assert len(headers) == MAX_HEADERS + 1
    status, _, body = await _raw_exchange(gateway, request)
    assert status == 431
    _assert_openai_error(body, "too_many_headers")


async def test_header_block_of_16_kib_is_served(default_gateway: tuple[Gateway, str]) -> None:
    gateway, key = default_gateway
    request, headers = _chat_request(key, _padding_header(key, MAX_HEADER_BYTES))
    assert _header_bytes(headers) == MAX_HEADER_BYTES
    status, _, _ = await _raw_exchange(gateway, request)
    assert status == 200


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 64 * 1024, MIB], ids=["16KiB+1", "64KiB", "1MiB"])
async def test_header_block_over_16_kib_gets_431(default_gateway: tuple[Gateway, str], size: int) -> None:
    gateway, key = default_gateway
    request, headers = _chat_request(key, _padding_header(key, size))
    assert _header_bytes(headers) == size
    status, _, body = await _raw_exchange(gateway, request)
    assert status == 431
    _assert_openai_error(body, "headers_too_large")


# --- compressed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "GZIP", "identity, gzip"])
async def test_compressed_body_gets_415(default_gateway: tuple[Gateway, str], encoding: str) -> None:
    gateway, key = default_gateway
    body = gzip.compress(_body_of_size(100))
    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", content=body, headers={"content-encoding": encoding})
    assert response.status_code == 415
    _assert_openai_error(response.content, "unsupported_content_encoding")


async def test_identity_content_encoding_is_served(default_gateway: tuple[Gateway, str]) -> None:
    gateway, key = default_gateway
    async with _client(gateway, key) as client:
        response = await client.post(
            "/chat/completions", content=_body_of_size(100), headers={"content-encoding": "identity"}
        )
    assert response.status_code == 200, response.text


async def test_gzip_bomb_gets_415_and_the_process_grows_by_less_than_50_mib(
    default_gateway: tuple[Gateway, str],
) -> None:
    """1 GiB of zeros as 1 MiB of gzip (deflate's ratio tops out near 1030:1): refused unread, never inflated."""
    gateway, key = default_gateway
    member = gzip.compress(b"\0" * MIB, compresslevel=9)
    bomb = member * 1024  # concatenated gzip members decompress to their concatenation: 1 GiB
    process = psutil.Process()
    before = process.memory_info().rss
    async with _client(gateway, key) as client:
        response = await client.post("/chat/completions", content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 415
    assert process.memory_info().rss - before < 50 * MIB
