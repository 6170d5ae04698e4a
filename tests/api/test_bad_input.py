"""Bad request bodies get a 4xx in OpenAI's error shape, naming the field at fault (issue acceptance 7)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.harness import Gateway, file_config, running_gateway
from tests.servers import Servers, flushed_redis_url, fresh_database

OK_MESSAGES = b'[{"role": "user", "content": "hi"}]'


def _chat(rest: bytes = b"") -> bytes:
    """A valid chat body for model `small`, with `rest` (`, "field": value…`) appended inside the object."""
    return b'{"model": "small", "messages": ' + OK_MESSAGES + rest + b"}"


# Each case: id, body, the status expected, and the `param` the error must name.
BAD_BODIES: list[tuple[str, bytes, int, str | None]] = [
    ("invalid-json", b'{"model": "small", "messages": [', 400, None),
    ("trailing-garbage", _chat() + b" x", 400, None),
    ("not-an-object", b'[{"model": "small"}]', 400, None),
    ("empty", b"", 400, None),
    ("invalid-utf8", b'{"model": "small", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ("invalid-utf8-in-unknown-field", _chat(b', "metadata": "\xc3\x28"'), 400, None),
    ("lone-surrogate", b'{"model": "small", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
    ("lone-surrogate-in-user", _chat(b', "user": "a\\udc00"'), 400, None),
    ("nan-literal", _chat(b', "temperature": NaN'), 400, None),
    ("infinity-literal", _chat(b', "top_p": Infinity'), 400, None),
    ("1e400", _chat(b', "temperature": 1e400'), 400, "temperature"),
    ("1e400-in-unknown-field", _chat(b', "metadata": {"x": [1e400]}'), 400, None),
    ("integer-beyond-2^53", _chat(b', "seed": 9007199254740993'), 400, "seed"),
    ("integer-beyond-2^53-in-unknown-field", _chat(b', "metadata": {"x": -9007199254740993}'), 400, "metadata"),
    ("nesting-65-deep", _chat(b', "metadata": ' + b"[" * 64 + b"]" * 64), 400, "metadata"),
    ("nesting-100000-deep", _chat(b', "metadata": ' + b"[" * 100_000 + b"]" * 100_000), 400, None),
    ("model-wrong-type", b'{"model": 5, "messages": ' + OK_MESSAGES + b"}", 400, "model"),
    ("model-empty", b'{"model": "", "messages": ' + OK_MESSAGES + b"}", 400, "model"),
    ("messages-wrong-type", b'{"model": "small", "messages": "hi"}', 400, "messages"),
    ("messages-empty", b'{"model": "small", "messages": []}', 400, "messages"),
    ("role-unknown", b'{"model": "small", "messages": [{"role": "root", "content": "hi"}]}', 400, "messages[0].role"),
    ("content-wrong-type", b'{"model": "small", "messages": [{"role": "user", "content": 1}]}', 400,
     "messages[0].content"),
    ("temperature-wrong-type", _chat(b', "temperature": "hot"'), 400, "temperature"),
    ("temperature-out-of-range", _chat(b', "temperature": 2.5'), 400, "temperature"),
    ("stream-wrong-type", _chat(b', "stream": "yes"'), 400, "stream"),
    ("max-tokens-zero", _chat(b', "max_tokens": 0'), 400, "max_tokens"),
    ("model-missing", b'{"messages": ' + OK_MESSAGES + b"}", 400, "model"),
    ("messages-missing", b'{"model": "small"}', 400, "messages"),
    ("role-missing", b'{"model": "small", "messages": [{"content": "hi"}]}', 400, "messages[0].role"),
    ("tool-name-missing", _chat(b', "tools": [{"type": "function", "function": {}}]'), 400, "tools[0].function.name"),
    ("routing-override", _chat(b', "api_base": "http://169.254.169.254/"'), 400, "api_base"),
    ("nul-in-model", b'{"model": "sm\\u0000all", "messages": ' + OK_MESSAGES + b"}", 404, "model"),
    ("unknown-model", b'{"model": "gpt-nonexistent", "messages": ' + OK_MESSAGES + b"}", 404, "model"),
]  # fmt: skip


# Bodies exactly at a JSON limit (RELIABILITY §5), or odd but well-formed: served.
SERVED_BODIES: list[tuple[str, bytes]] = [
    ("nesting-64-deep", _chat(b', "metadata": ' + b"[" * 63 + b"]" * 63)),
    ("integer-2^53", _chat(b', "seed": 9007199254740992')),
    ("integer-minus-2^53", _chat(b', "metadata": {"x": -9007199254740992}')),
    ("largest-double", _chat(b', "metadata": 1.7976931348623157e308')),
    ("duplicate-key-last-wins", b'{"model": "nope", "model": "small", "messages": ' + OK_MESSAGES + b"}"),
    ("escaped-surrogate-pair", _chat(b', "user": "\\ud83d\\ude80"')),
]


@pytest.fixture(name="shared_gateway", scope="module")
async def fx_shared_gateway(servers: Servers, database_template: str) -> AsyncIterator[Gateway]:
    """One gateway for the module: every request here is refused or read-only, so tests cannot disturb each other."""
    async with (
        fresh_database(servers, database_template) as database_url,
        running_gateway(database_url, flushed_redis_url(servers), file_config()) as gateway,
    ):
        yield gateway


@pytest.fixture(name="client", scope="module")
async def fx_client(shared_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    _, key = await shared_gateway.tenant_key()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    nodelay = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(
        base_url=shared_gateway.base_url, headers=headers, timeout=30, transport=nodelay
    ) as client:
        yield client


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    """The body is exactly OpenAI's `{"error": {"message", "type", "param", "code"}}`; returns `error`."""
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(("body", "status", "param"), [case[1:] for case in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
async def test_bad_body_gets_an_openai_error_naming_the_field_at_fault(
    client: httpx.AsyncClient, body: bytes, status: int, param: str | None
) -> None:
    response = await client.post("/chat/completions", content=body)
    assert response.status_code == status, response.text
    error = assert_openai_error(response)
    assert error["param"] == param


@pytest.mark.parametrize("body", [case[1] for case in SERVED_BODIES], ids=[c[0] for c in SERVED_BODIES])
async def test_body_at_a_json_limit_is_served(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/chat/completions", content=body)
    assert response.status_code == 200, response.text


async def test_unknown_model_error_has_the_model_not_found_code(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", content=b'{"model": "nope", "messages": ' + OK_MESSAGES + b"}")
    assert response.status_code == 404
    assert assert_openai_error(response)["code"] == "model_not_found"


async def test_body_over_the_default_10_mb_limit_gets_413_in_openai_error_shape(client: httpx.AsyncClient) -> None:
    padding = b" " * (10_000_001 - len(_chat()))
    response = await client.post("/chat/completions", content=_chat(padding))
    assert response.status_code == 413
    assert assert_openai_error(response)["code"] == "request_too_large"


async def test_nul_in_user_and_content_is_answered_and_metered(
    client: httpx.AsyncClient, shared_gateway: Gateway
) -> None:
    """NUL is legal JSON text: the request is served, and its usage record is still written."""
    body = _chat(b', "user": "a\\u0000b"').replace(b'"hi"', b'"h\\u0000i"')
    response = await client.post("/chat/completions", content=body)
    assert response.status_code == 200, response.text
    await shared_gateway.flush_ledger()
    count = await shared_gateway.runtime.pool.fetchval(
        "SELECT count(*) FROM usage_records WHERE request_id = $1", response.headers["x-request-id"]
    )
    assert count == 1
