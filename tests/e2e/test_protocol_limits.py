"""T22/T24 on the production stack: `sluice serve` (uvloop + httptools) enforces the protocol limits, and its
request log stays one JSON line per request whatever the client puts in the model name or `user`."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.harness import ADMIN_TOKEN, config_toml
from tests.processes import ServeProcess, serve_processes
from tests.servers import Servers, flushed_redis_url, fresh_database

BODY = b'{"model": "small", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(name="serve", scope="module")
async def fx_serve(
    servers: Servers, database_template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ServeProcess, str]]:
    """One `sluice serve` process and a tenant key for the module; every test here only sends requests."""
    workdir = tmp_path_factory.mktemp("serve")
    async with fresh_database(servers, database_template) as database_url:
        with serve_processes(
            workdir, config_toml(), database_url=database_url, redis_url=flushed_redis_url(servers)
        ) as procs:
            async with httpx.AsyncClient(
                base_url=procs[0].base, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as admin:
                tenant = (await admin.post("/admin/tenants", json={"name": "protocol"})).json()
                key = (await admin.post(f"/admin/tenants/{tenant['id']}/keys", json={})).json()["key"]
            yield procs[0], key


def _request(key: str, header_lines: bytes = b"", body: bytes = BODY, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
    )
    return head.encode() + header_lines + b"\r\n" + body


async def _status_of(proc: ServeProcess, request: bytes, timeout: float = 10) -> int:
    """The status the server answers to `request`, sent as bytes on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        return int(status_line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


_FILLERS = b"".join(b"x-fill-%d: 1\r\n" % i for i in range(97))  # with the 4 fields of `_request`: 101
# Each case: the extra header lines, the body, the Content-Length sent (None: the body's), the status expected.
PROTOCOL_CASES: dict[str, tuple[bytes, bytes, int | None, int]] = {
    "cr-in-header": (b"x-request-id: a\rset-cookie: evil=1\r\n", BODY, None, 400),
    "lf-in-header": (b"x-request-id: a\nset-cookie: evil=1\r\n", BODY, None, 400),
    "nul-in-header": (b"x-request-id: a\x00b\r\n", BODY, None, 400),
    "101-headers": (_FILLERS, BODY, None, 431),
    "1-mib-header": (b"x-pad: " + b"a" * 2**20 + b"\r\n", BODY, None, 431),
    "gzip-body": (b"content-encoding: gzip\r\n", gzip.compress(BODY), None, 415),
    "content-length-over-10-mb": (b"", b"", 10_000_001, 413),
    "well-formed": (b"", BODY, None, 200),
}


@pytest.mark.parametrize(
    ("header_lines", "body", "content_length", "status"), PROTOCOL_CASES.values(), ids=PROTOCOL_CASES.keys()
)
async def test_sluice_serve_enforces_the_protocol_limits(
    serve: tuple[ServeProcess, str], header_lines: bytes, body: bytes, content_length: int | None, status: int
) -> None:
    proc, key = serve
    assert await _status_of(proc, _request(key, header_lines, body, content_length)) == status


INJECTIONS = {
    "json-line": '\n{"level":"critical","event":"forged","tenant":"admin"}',
    "crlf": "a\r\nb",
    "ansi-escapes": "\x1b[2J\x1b[31mred\x1b[0m",
    "nul-and-controls": "\x00\x07\x08\x7f",
    "unicode-line-separators": "\u2028\u2029\x85",
    "quote-and-backslash": '"}\\',
}


def _log_lines(proc: ServeProcess) -> list[dict[str, Any]]:
    """Every complete line `sluice serve` wrote to stdout, each required to be one JSON object."""
    raw = proc.stdout_path.read_bytes()
    assert b"\x1b" not in raw, "an escape sequence reached the log raw"
    complete = raw.split(b"\n")[:-1]  # the part after the last newline may still be being written
    return [msgspec.json.decode(line) for line in complete]


async def _log_line_of(proc: ServeProcess, request_id: str, within_s: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        found = [line for line in _log_lines(proc) if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("field", ["model", "user"])
@pytest.mark.parametrize("injected", INJECTIONS.values(), ids=INJECTIONS.keys())
async def test_request_log_is_one_json_line_with_the_value_escaped(
    serve: tuple[ServeProcess, str], field: str, injected: str
) -> None:
    proc, key = serve
    body: dict[str, Any] = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    body[field] = f"x{injected}"
    async with httpx.AsyncClient(base_url=proc.base_url, headers={"authorization": f"Bearer {key}"}) as client:
        response = await client.post("/chat/completions", content=msgspec.json.encode(body))
    assert response.status_code == (404 if field == "model" else 200)
    lines = await _log_line_of(proc, response.headers["x-request-id"])
    assert len(lines) == 1
    assert lines[0]["level"] == "info"
    assert lines[0]["model"] == body["model"]
    assert not any(line.get("level") == "critical" for line in _log_lines(proc))
