"""T21 for the agent APIs: Hypothesis-generated Responses, Messages and embeddings bodies never get a 5xx; every
refusal is the endpoint's own error shape, and every 200 is metered (the chat-completions fuzz is beside it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.api.test_body_fuzz import ALLOWED_STATUSES, Pairs, _usage_recorded, anything, dump, mostly, texts
from tests.harness import Gateway

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one gateway and tenant serve every example on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
FUNCTION = Pairs((("type", "function"), ("name", "f"), ("parameters", Pairs((("type", "object"),)))))
ANTHROPIC_TOOL = Pairs((("name", "f"), ("input_schema", Pairs((("type", "object"),)))))


def _object(draw: st.DrawFn, required: list[tuple[str, Any]], optional: dict[str, st.SearchStrategy[Any]]) -> bytes:
    pairs = list(required)
    for field in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        pairs.append((field, mostly(draw, optional[field], anything)))
    if not draw(st.integers(0, 3)):
        pairs.append((draw(texts), draw(anything)))  # an unknown field
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return dump(draw(anything))
    if kind == 1:
        return draw(st.binary(max_size=64))
    return dump(Pairs(draw(st.permutations(pairs))))


@st.composite
def _message(draw: st.DrawFn, roles: list[str]) -> Pairs:
    role = mostly(draw, st.sampled_from(roles), texts | anything)
    parts = st.lists(st.builds(lambda t: Pairs((("type", "text"), ("text", t))), texts), min_size=1, max_size=2)
    return Pairs((("role", role), ("content", mostly(draw, texts | parts, anything))))


@st.composite
def responses_bodies(draw: st.DrawFn) -> bytes:
    items = st.lists(_message(["user", "assistant", "system"]), max_size=3)
    call = Pairs((("type", "function_call"), ("call_id", "c1"), ("name", "f"), ("arguments", "{}")))
    output = Pairs((("type", "function_call_output"), ("call_id", "c1"), ("output", "ok")))
    inputs = texts | items | st.just([call, output])
    model = mostly(draw, st.sampled_from(["small", "fake-ok", "fake-agent"]), texts | anything)
    optional = {
        "instructions": texts,
        "stream": st.booleans(),
        "store": st.booleans(),
        "max_output_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 2),
        "tools": st.lists(st.just(FUNCTION), max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "previous_response_id": texts,
        "text": st.just(Pairs((("format", Pairs((("type", "json_object"),))),))),
    }
    return _object(draw, [("model", model), ("input", mostly(draw, inputs, anything))], optional)


@st.composite
def messages_bodies(draw: st.DrawFn) -> bytes:
    listed = st.lists(_message(["user", "assistant"]), min_size=1, max_size=3)
    model = mostly(draw, st.sampled_from(["small", "fake-ok", "fake-agent"]), texts | anything)
    required = [("model", model), ("max_tokens", mostly(draw, st.integers(1, 64), anything))]
    optional = {
        "system": texts,
        "stream": st.booleans(),
        "temperature": st.floats(0, 1),
        "tools": st.lists(st.just(ANTHROPIC_TOOL), max_size=2),
        "tool_choice": st.just(Pairs((("type", "auto"),))),
        "stop_sequences": st.lists(texts, max_size=5),
        "metadata": st.just(Pairs((("user_id", "u1"),))),
    }
    return _object(draw, [*required, ("messages", mostly(draw, listed, anything))], optional)


@st.composite
def embedding_bodies(draw: st.DrawFn) -> bytes:
    inputs = texts | st.lists(texts, max_size=4) | st.lists(st.integers(-5, 2**32), max_size=4)
    model = mostly(draw, st.sampled_from(["small", "fake-ok"]), texts | anything)
    optional = {
        "encoding_format": st.sampled_from(["float", "base64", "int8"]),
        "dimensions": st.integers(-1, 70_000),
        "user": texts,
    }
    return _object(draw, [("model", model), ("input", mostly(draw, inputs, anything))], optional)


@pytest.fixture(name="http")
async def fx_http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    _, key = await gateway.tenant_key()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    limits = httpx.Limits(max_keepalive_connections=0)  # see test_body_fuzz: delayed ACKs on keep-alive
    async with httpx.AsyncClient(base_url=gateway.base, headers=headers, timeout=60, limits=limits) as client:
        yield client


@pytest.fixture(name="db")
async def fx_db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _check(gateway: Gateway, db: asyncpg.Connection, response: httpx.Response, *, anthropic: bool) -> None:
    event(f"status {response.status_code}")
    assert response.status_code in ALLOWED_STATUSES, (response.status_code, response.text)
    if response.status_code == 200:
        assert await _usage_recorded(gateway, db, response.headers["x-request-id"])
        return
    payload = response.json()
    if anthropic:
        assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
    else:
        assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]


@FUZZ
@given(body=responses_bodies())
async def test_no_responses_body_gets_a_5xx(
    gateway: Gateway, http: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    await _check(gateway, db, await http.post("/v1/responses", content=body), anthropic=False)


@FUZZ
@given(body=messages_bodies())
async def test_no_messages_body_gets_a_5xx(
    gateway: Gateway, http: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    await _check(gateway, db, await http.post("/v1/messages", content=body), anthropic=True)


@FUZZ
@given(body=embedding_bodies())
async def test_no_embeddings_body_gets_a_5xx(
    gateway: Gateway, http: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    await _check(gateway, db, await http.post("/v1/embeddings", content=body), anthropic=False)
