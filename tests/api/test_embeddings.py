"""`POST /v1/embeddings` through the official openai SDK: both encodings, pricing, the ledger, the cache, errors."""

from __future__ import annotations

import array
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway, file_config, running_gateway
from tests.openai_spec import validate

EXTRA = """
[[deployments]]
kind = "simulator"
name = "sim-embed"
model = "embed"
[prices.sim-embed]
input = 0.02
output = 0
[[models]]
name = "embed"
route = { policy = "fixed", deployment = "sim-embed" }
[[models]]
name = "cascade"
route = { policy = "cascade", small = "sim-small", large = "sim-large" }
"""


def _fake_embed(base_url: str) -> str:
    return f"""
[[deployments]]
kind = "openai"
name = "fake-embed"
base_url = "{base_url}"
model = "fake-embed"
[prices.fake-embed]
input = 0.10
output = 0
[[models]]
name = "fake-embed"
route = {{ policy = "fallback", deployments = ["fake-500", "fake-embed"] }}
cache = {{ enabled = true }}
"""


@pytest.fixture(name="embedder")
async def fx_embedder(database_url: str, redis_url: str, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    config = file_config(fake.base_url, extra=EXTRA + _fake_embed(fake.base_url))
    async with running_gateway(database_url, redis_url, config) as gateway:
        yield gateway


def _client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


async def test_base64_default_and_float_form_give_identical_vectors(embedder: Gateway) -> None:
    _, key = await embedder.tenant_key()
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    async with _client(embedder, key) as client:
        default = await client.embeddings.with_raw_response.create(model="embed", input=texts)
        floats = await client.embeddings.create(model="embed", input=texts, encoding_format="float")
    assert default.http_request.read() and b'"encoding_format":"base64"' in default.http_request.read()
    decoded = default.parse()
    assert [item.embedding for item in decoded.data] == [item.embedding for item in floats.data]
    assert len(decoded.data) == 2 and len(decoded.data[0].embedding) == 256
    assert decoded.data[0].embedding != decoded.data[1].embedding
    assert decoded.usage.prompt_tokens == floats.usage.prompt_tokens > 0


async def test_an_embedding_is_priced_per_input_token_and_written_to_the_ledger(
    embedder: Gateway, database_url: str
) -> None:
    _, key = await embedder.tenant_key()
    async with _client(embedder, key) as client:
        raw = await client.embeddings.with_raw_response.create(model="embed", input="price me", encoding_format="float")
    body = raw.parse()
    cost = Decimal(raw.headers["x-sluice-cost-usd"])
    assert cost == body.usage.prompt_tokens * Decimal("0.02") / 1_000_000
    validate(raw.http_response.json(), "CreateEmbeddingResponse")
    await embedder.flush_ledger()
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", raw.headers["x-request-id"])
    finally:
        await conn.close()
    assert row is not None and row["cost_usd"] == cost and row["prompt_tokens"] == body.usage.prompt_tokens


async def test_the_upstream_is_asked_for_floats_and_its_vectors_reach_the_client_as_float32(
    embedder: Gateway, fake: FakeUpstream
) -> None:
    _, key = await embedder.tenant_key()
    async with _client(embedder, key) as client:
        first = await client.embeddings.with_raw_response.create(model="fake-embed", input=["a", "b", "c"])
        again = await client.embeddings.with_raw_response.create(model="fake-embed", input=["a", "b", "c"])
        as_floats = await client.embeddings.create(model="fake-embed", input=["a", "b", "c"], encoding_format="float")
    assert fake.requests[-1]["json"]["encoding_format"] == "float"
    assert first.headers["x-sluice-route"] == "fallback:2"
    assert (first.headers["x-sluice-cache"], again.headers["x-sluice-cache"]) == ("miss", "hit")
    assert fake.calls["fake-embed"] == 1, "the second and third requests were answered from the cache"
    assert Decimal(again.headers["x-sluice-cost-usd"]) == 0
    vectors = [item.embedding for item in first.parse().data]
    assert vectors == [item.embedding for item in as_floats.data]
    assert vectors[0] == array.array("f", [((0 + 1) * (j + 3) % 17) / 7.0 + 1e-9 for j in range(8)]).tolist()


async def test_a_request_over_a_mebibyte_reaches_the_upstream_whole(embedder: Gateway, fake: FakeUpstream) -> None:
    """Found by a long T21 run: a body past 1 MiB (here an unknown field, passed through) was a 500, because the
    transport handed aiohttp one bytes payload it warns about. It is streamed now and arrives as sent."""
    _, key = await embedder.tenant_key()
    padding = [0] * 600_000  # 1.2 MB of JSON
    async with _client(embedder, key) as client:
        body = await client.embeddings.create(
            model="fake-embed", input="hello", encoding_format="float", extra_body={"x_padding": padding}
        )
    assert len(body.data) == 1
    assert fake.requests[-1]["json"]["x_padding"] == padding


async def test_token_id_inputs_are_counted_one_token_each(embedder: Gateway, fake: FakeUpstream) -> None:
    _, key = await embedder.tenant_key()
    async with _client(embedder, key) as client:
        body = await client.embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert body.usage.prompt_tokens == 5 and len(body.data) == 2


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "embed", "input": ""}, 400, "input"),
        ({"model": "embed", "input": []}, 400, "input"),
        ({"model": "embed", "input": [1, "a"]}, 400, "input"),
        ({"model": "embed", "input": [[]]}, 400, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "embed", "input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"model": "embed"}, 400, "input"),
        ({"model": "nope", "input": "x"}, 404, "model"),
        ({"model": "cascade", "input": "x"}, 400, "model"),
    ],
    ids=["empty", "empty-list", "mixed", "empty-ids", "encoding", "dimensions", "no-input", "unknown", "cascade"],
)
async def test_bad_embedding_requests_get_a_clear_error_and_cost_nothing(
    embedder: Gateway, database_url: str, body: dict[str, object], status: int, param: str | None
) -> None:
    _, key = await embedder.tenant_key()
    async with httpx.AsyncClient(base_url=embedder.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        response = await http.post("/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["param"] == param
    validate(response.json(), "ErrorResponse")


async def test_embeddings_need_a_key(embedder: Gateway) -> None:
    async with httpx.AsyncClient(base_url=embedder.base_url) as http:
        response = await http.post("/embeddings", json={"model": "embed", "input": "x"})
    assert response.status_code == 401


async def test_embeddings_are_their_own_genai_operation_and_a_cache_hit_is_no_client_call(
    embedder: Gateway, fake: FakeUpstream
) -> None:
    _, key = await embedder.tenant_key()
    async with _client(embedder, key) as client:
        for _ in range(2):
            await client.embeddings.create(model="fake-embed", input="once", encoding_format="float")
    scrape = (await embedder.admin.get("/metrics")).text
    client_tokens = [
        line for line in scrape.splitlines()
        if line.startswith("gen_ai_client_token_usage_count{") and 'gen_ai_operation_name="embeddings"' in line
    ]  # fmt: skip
    assert client_tokens and all('gen_ai_token_type="input"' in line for line in client_tokens)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in client_tokens) == 1, "one upstream call, one cache hit"
    served = [line for line in scrape.splitlines() if line.startswith("gen_ai_server_request_duration_seconds_count")]
    assert any('gen_ai_operation_name="embeddings"' in line and line.endswith(" 2.0") for line in served)
