"""T21: Hypothesis-generated chat bodies never get a 5xx; every 4xx is an OpenAI error, every 200 is metered.

Bodies are built as bytes, not through a JSON encoder, so that they can hold what encoders refuse to
write: `NaN`, `1e400`, duplicate keys, invalid UTF-8, lone surrogates, 10^5-deep nesting, 10^6-long arrays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.harness import Gateway

ALLOWED_STATUSES = {200, 400, 404, 413, 429}


class Raw(bytes):
    """Bytes written into the body as they are: a literal no JSON encoder would produce."""


class Pairs(tuple[tuple[Any, Any], ...]):
    """A JSON object as key/value pairs, so that a key may appear twice."""


def dump(value: Any) -> bytes:
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, Pairs):
        return b"{" + b",".join(dump(k) + b":" + dump(v) for k, v in value) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return msgspec.json.encode(value)


def nested(depth: int) -> Raw:
    return Raw(b"[" * depth + b"]" * depth)


def zeros(length: int) -> Raw:
    return Raw(b"[" + b",".join([b"0"] * length) + b"]")


ODD_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" + b"0" * 400, b"9007199254740993", b"-0"]
odd_numbers = st.sampled_from(ODD_NUMBERS).map(Raw)
# Invalid UTF-8 (a stray byte, an overlong form, a CESU-8 surrogate) and escaped lone surrogates.
ODD_STRINGS = [b'"\xff"', b'"a\xc3\x28"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\\ud800"', b'"x\\udfff"', b'"\\u0000"']
odd_strings = st.sampled_from(ODD_STRINGS).map(Raw) | st.binary(max_size=8).map(lambda b: Raw(b'"' + b + b'"'))
texts = st.text(max_size=24) | st.sampled_from(["", "\x00", "a\x00b", '\n{"level":"critical"}', "\x1b[31mred"])
keys = st.text(max_size=8) | st.sampled_from(["model", "messages", "stream", "n", "tools", "api_key"])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
leaves = scalars | texts | odd_numbers | odd_strings
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.lists(st.tuples(keys, children), max_size=4).map(Pairs),
    max_leaves=12,
)
deep = st.integers(1, 100_000).map(nested)
big_arrays = st.sampled_from([2048, 2049, 100_000, 1_000_000]).map(zeros)


@st.composite
def _anything(draw: st.DrawFn) -> Any:
    """Any JSON value; one in ten is nested up to 10^5 deep, one in ten an array of up to 10^6 elements."""
    kind = draw(st.integers(0, 9))
    return draw(deep if kind == 0 else big_arrays if kind == 1 else json_values)


anything = _anything()


def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """Fifteen draws in sixteen from `valid`: most bodies should get far enough to be served, or be refused late."""
    return draw(valid if draw(st.integers(0, 15)) else other)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    role = mostly(draw, st.sampled_from(["user", "system", "assistant", "developer"]), texts | anything)
    parts = st.lists(st.builds(lambda text: Pairs((("type", "text"), ("text", text))), texts), min_size=1, max_size=3)
    content = mostly(draw, texts | parts, anything)
    pairs = [("role", role), ("content", content)]
    if not draw(st.integers(0, 7)):
        pairs.append((draw(keys), draw(anything)))
    return Pairs(pairs)


def repeated_messages(count: int) -> Raw:
    return Raw(b"[" + b",".join([b'{"role":"user","content":"x"}'] * count) + b"]")


OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "stream_options": st.just(Pairs((("include_usage", True),))),
    "max_tokens": st.integers(1, 64),
    "n": st.integers(1, 9),
    "temperature": st.floats(0, 2),
    "stop": st.lists(st.text(max_size=3), max_size=5),
    "seed": st.integers(-(2**53), 2**53),
    "user": texts,
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 3),
    "tools": st.lists(st.just(Pairs((("type", "function"), ("function", Pairs((("name", "f"),)))))), max_size=3),
    "metadata": json_values,
}


@st.composite
def chat_bodies(draw: st.DrawFn) -> Pairs:
    """A chat body whose every part is usually well-formed, and sometimes anything at all."""
    model = mostly(draw, st.sampled_from(["small", "large"]), texts | anything)
    listed = st.lists(messages(), min_size=1, max_size=4)
    many = st.sampled_from([0, 2048, 2049, 300_000]).map(repeated_messages)
    pairs: list[tuple[Any, Any]] = [("model", model), ("messages", mostly(draw, listed, many | anything))]
    for field in draw(st.lists(st.sampled_from(sorted(OPTIONAL_FIELDS)), unique=True, max_size=4)):
        pairs.append((field, mostly(draw, OPTIONAL_FIELDS[field], anything)))
    if not draw(st.integers(0, 3)):
        pairs.append((draw(keys), draw(anything)))  # an unknown field, or a duplicate key
    return Pairs(draw(st.permutations(pairs)))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly chat bodies; sometimes any JSON value, or bytes that are not JSON at all."""
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return dump(draw(anything))
    if kind == 1:
        return draw(st.binary(max_size=64))
    return dump(draw(chat_bodies()))


@pytest.fixture(name="client")
async def fx_client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    _, key = await gateway.tenant_key()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    # A fresh connection per request: the harness's keep-alive connections wait ~40 ms per request on
    # delayed ACKs (its listening socket is made without IPPROTO_TCP, so asyncio leaves Nagle on).
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=60, limits=limits) as client:
        yield client


@pytest.fixture(name="db")
async def fx_db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _usage_recorded(gateway: Gateway, db: asyncpg.Connection, request_id: str, within_s: float = 5.0) -> bool:
    """Whether the request's usage record reaches Postgres within the deadline (a stream is charged as it ends)."""
    deadline = time.monotonic() + within_s
    while True:
        await gateway.flush_ledger()
        if await db.fetchval("SELECT count(*) FROM usage_records WHERE request_id = $1", request_id):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one gateway and tenant serve every example on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(body=bodies())
@example(body=b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], "metadata": 1e400}')
@example(body=b'{"model": "small", "messages": [{"role": "user", "content": "hi\xff"}]}')
@example(body=b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], "x": "\\ud800"}')
@example(body=b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], "user": "a\\u0000"}')
@example(body=b'{"model": "small", "model": "large", "messages": [{"role": "user", "content": "hi"}]}')
@example(body=b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], "x": ' + nested(100_000) + b"}")
@example(body=b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], "x": ' + zeros(10**6) + b"}")
@example(body=b'{"model": "small", "messages": ' + repeated_messages(10**6) + b"}")
async def test_no_body_gets_a_5xx_and_every_200_is_metered(
    gateway: Gateway, client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    response = await client.post("/chat/completions", content=body)
    event(f"status {response.status_code}")
    assert response.status_code in ALLOWED_STATUSES, (response.status_code, response.text)
    if response.status_code == 200:
        assert await _usage_recorded(gateway, db, response.headers["x-request-id"])
        return
    payload = response.json()
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
