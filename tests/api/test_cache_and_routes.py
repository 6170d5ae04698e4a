"""Issue 4 through the official openai SDK against a counting fake upstream: the decision cache (hits, single
flight, opt-outs, SSE replay), fallback routes, and cascade routes with escalation memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import redis.asyncio as aioredis

from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway, file_config, running_gateway

DETERMINISTIC: dict[str, Any] = {"temperature": 0}


def _routes(fake_base_url: str) -> str:
    def deployment(name: str, first_byte_s: float = 2, model: str | None = None) -> str:
        return f"""
[[deployments]]
kind = "openai"
name = "{name}"
base_url = "{fake_base_url}"
model = "{model or name}"
timeouts = {{ connect_s = 2, first_byte_s = {first_byte_s}, idle_s = 2 }}
"""

    return "\n".join(
        [
            deployment("fake-small"),
            deployment("fake-large"),
            deployment("slow-primary", first_byte_s=1, model="fake-slow"),
            """
[prices.fake-small]
input = 0.10
output = 0.20
[prices.fake-large]
input = 2.00
output = 4.00
[[models]]
name = "cached"
route = { policy = "fixed", deployment = "fake-large" }
cache = { enabled = true, ttl_s = 60 }
[[models]]
name = "cached-half"
route = { policy = "fixed", deployment = "fake-large" }
cache = { enabled = true, charge_fraction = 0.5 }
[[models]]
name = "fb-5xx"
route = { policy = "fallback", deployments = ["fake-500", "fake-503", "fake-large"] }
[[models]]
name = "fb-timeout"
route = { policy = "fallback", deployments = ["slow-primary", "fake-large"], latency_budget_s = 10 }
[[models]]
name = "fb-4xx"
route = { policy = "fallback", deployments = ["fake-400", "fake-large"] }
[[models]]
name = "cascade"
route = { policy = "cascade", small = "fake-small", large = "fake-large", threshold = 0.5 }
""",
        ]
    )


@pytest.fixture(name="routed")
async def fx_routed(database_url: str, redis_url: str, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    config = file_config(fake.base_url, extra=_routes(fake.base_url))
    async with running_gateway(database_url, redis_url, config) as gateway:
        yield gateway


def _client(gateway: Gateway, key: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, default_headers=headers)


async def _ask(client: openai.AsyncOpenAI, model: str, text: str, **extra: Any) -> Any:
    return await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **extra
    )


async def _ledger(database_url: str, request_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    assert row is not None
    return row


async def _metric(gateway: Gateway, name: str, **labels: str) -> float:
    text = (await gateway.admin.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- acceptance 1: a hit is the identical body, no upstream call, cost 0, and per tenant --------------------


async def test_the_same_deterministic_request_twice_is_a_free_hit_with_the_identical_body(
    routed: Gateway, fake: FakeUpstream, database_url: str
) -> None:
    tenant, key = await routed.tenant_key("cache-a")
    async with _client(routed, key) as client:
        first = await _ask(client, "cached", "What is the capital of France?", **DETERMINISTIC)
        second = await _ask(client, "cached", "What is the capital of France?", **DETERMINISTIC)
    assert fake.calls["fake-large"] == 1, "the second answer came from the cache"
    assert first.headers["x-sluice-cache"] == "miss" and second.headers["x-sluice-cache"] == "hit"
    assert second.http_response.content == first.http_response.content
    assert Decimal(first.headers["x-sluice-cost-usd"]) > 0
    assert Decimal(second.headers["x-sluice-cost-usd"]) == 0
    await routed.flush_ledger()
    hit = await _ledger(database_url, second.headers["x-request-id"])
    assert hit["cost_usd"] == 0 and hit["usage_source"] == "cache"
    saved = await _metric(routed, "sluice_cost_saved_usd_total", reason="cache_hit")
    assert saved == pytest.approx(float(first.headers["x-sluice-cost-usd"]))

    _, other_key = await routed.tenant_key("cache-b")
    async with _client(routed, other_key) as client:
        other = await _ask(client, "cached", "What is the capital of France?", **DETERMINISTIC)
    assert other.headers["x-sluice-cache"] == "miss", "another tenant never sees this tenant's answers"
    assert fake.calls["fake-large"] == 2
    assert tenant


async def test_a_hit_costs_the_routes_configured_fraction(routed: Gateway, fake: FakeUpstream) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        first = await _ask(client, "cached-half", "half price please", seed=7)
        second = await _ask(client, "cached-half", "half price please", seed=7)
    assert second.headers["x-sluice-cache"] == "hit"
    assert Decimal(second.headers["x-sluice-cost-usd"]) == Decimal(first.headers["x-sluice-cost-usd"]) / 2


# --- acceptance 2: single flight ---------------------------------------------------------------------------


async def test_fifty_identical_concurrent_requests_make_one_upstream_call(routed: Gateway, fake: FakeUpstream) -> None:
    _, key = await routed.tenant_key(rpm=1000)
    fake.latency_s = 0.5  # every request arrives while the first is still upstream
    async with _client(routed, key) as client:
        answers = await asyncio.gather(
            *(_ask(client, "cached", "one call for all", **DETERMINISTIC) for _ in range(50))
        )
    assert fake.calls["fake-large"] == 1
    bodies = {answer.http_response.content for answer in answers}
    assert len(bodies) == 1
    assert all(answer.parse().choices[0].message.content for answer in answers)
    assert sorted(answer.headers["x-sluice-cache"] for answer in answers).count("miss") == 1


# --- acceptance 3: opt-outs and SSE replay ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "extra"),
    [
        ({"cache-control": "no-store"}, DETERMINISTIC),
        ({"x-sluice-cache": "bypass"}, DETERMINISTIC),
        ({}, {"temperature": 0.7}),
        ({}, {}),  # no temperature: the provider's default samples
    ],
    ids=["no-store", "client-bypass", "temperature", "default-temperature"],
)
async def test_opted_out_and_non_deterministic_requests_are_never_cached(
    routed: Gateway, fake: FakeUpstream, headers: dict[str, str], extra: dict[str, Any]
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key, **headers) as client:
        for _ in range(2):
            raw = await _ask(client, "cached", "never from the cache", **extra)
            assert raw.headers["x-sluice-cache"] == "bypass"
    assert fake.calls["fake-large"] == 2
    async with _client(routed, key) as client:  # and nothing was stored for a later cacheable request either
        raw = await _ask(client, "cached", "never from the cache", **DETERMINISTIC)
    if headers:
        assert raw.headers["x-sluice-cache"] == "miss"


async def test_no_cache_refreshes_the_stored_answer(routed: Gateway, fake: FakeUpstream) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        await _ask(client, "cached", "refresh me", **DETERMINISTIC)
    async with _client(routed, key, **{"cache-control": "no-cache"}) as client:
        refreshed = await _ask(client, "cached", "refresh me", **DETERMINISTIC)
    assert refreshed.headers["x-sluice-cache"] == "bypass" and fake.calls["fake-large"] == 2
    async with _client(routed, key) as client:
        assert (await _ask(client, "cached", "refresh me", **DETERMINISTIC)).headers["x-sluice-cache"] == "hit"
    assert fake.calls["fake-large"] == 2


async def _stream_text(client: openai.AsyncOpenAI, text: str, **extra: Any) -> tuple[str, dict[str, str], Any]:
    raw = await client.chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": text}], stream=True, **DETERMINISTIC, **extra
    )
    parts, usage = [], None
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    return "".join(parts), dict(raw.headers), usage


async def test_a_streaming_request_is_replayed_from_the_cache_as_sse_the_sdk_reads(
    routed: Gateway, fake: FakeUpstream
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        plain = await _ask(client, "cached", "stream me later", **DETERMINISTIC)
        text, headers, usage = await _stream_text(client, "stream me later", stream_options={"include_usage": True})
        assert headers["x-sluice-cache"] == "hit"
        assert text == plain.parse().choices[0].message.content
        assert usage is not None and usage.total_tokens == plain.parse().usage.total_tokens
        # A streamed miss is stored too, and its replay reads the same.
        live, live_headers, _ = await _stream_text(client, "streamed first")
        replayed, replay_headers, _ = await _stream_text(client, "streamed first")
    assert (live_headers["x-sluice-cache"], replay_headers["x-sluice-cache"]) == ("miss", "hit")
    assert replayed == live
    assert fake.calls["fake-large"] == 2


# --- acceptance 4: fallback ------------------------------------------------------------------------------------


async def test_fallback_moves_past_5xx_deployments_and_says_which_served(
    routed: Gateway, fake: FakeUpstream, database_url: str
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        raw = await _ask(client, "fb-5xx", "primary is down")
    assert raw.headers["x-sluice-route"] == "fallback:3"
    assert raw.headers["x-sluice-model"] == "fake-large"
    assert (fake.calls["fake-500"], fake.calls["fake-503"], fake.calls["fake-large"]) == (1, 1, 1)
    await routed.flush_ledger()
    record = await _ledger(database_url, raw.headers["x-request-id"])
    assert (record["route"], record["deployment"]) == ("fallback:3", "fake-large")


async def test_fallback_moves_past_a_timed_out_deployment_within_the_budget(
    routed: Gateway, fake: FakeUpstream
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        raw = await _ask(client, "fb-timeout", "primary is slow")
    assert raw.headers["x-sluice-route"] == "fallback:2"
    assert fake.calls["fake-slow"] == 1 and fake.calls["fake-large"] == 1


async def test_fallback_streams_from_the_next_deployment(routed: Gateway, fake: FakeUpstream) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="fb-5xx", messages=[{"role": "user", "content": "stream past the outage"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert raw.headers["x-sluice-route"] == "fallback:3" and text


async def test_a_client_error_is_not_retried_elsewhere(routed: Gateway, fake: FakeUpstream) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        with pytest.raises(openai.BadRequestError):
            await _ask(client, "fb-4xx", "the request itself is wrong")
    assert fake.calls["fake-400"] == 1 and fake.calls["fake-large"] == 0


# --- cascade and acceptance 6: escalation memory -----------------------------------------------------------


async def test_a_confident_small_answer_is_returned_without_the_logprobs_the_cascade_asked_for(
    routed: Gateway, fake: FakeUpstream
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        raw = await _ask(client, "cascade", "an easy question")
    assert raw.headers["x-sluice-route"] == "cascade:small"
    assert float(raw.headers["x-sluice-confidence"]) >= 0.5
    assert raw.parse().choices[0].logprobs is None
    assert fake.requests[-1]["json"]["logprobs"] is True
    assert (fake.calls["fake-small"], fake.calls["fake-large"]) == (1, 0)
    assert await _metric(routed, "sluice_cost_saved_usd_total", reason="routed_small") > 0


async def test_an_escalated_prompt_sent_again_skips_the_small_model(
    routed: Gateway, fake: FakeUpstream, database_url: str
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        first = await _ask(client, "cascade", "an unsure question")
        assert first.headers["x-sluice-route"] == "cascade:escalated"
        assert float(first.headers["x-sluice-confidence"]) < 0.5
        assert (fake.calls["fake-small"], fake.calls["fake-large"]) == (1, 1)
        await asyncio.sleep(0.2)  # the escalation is remembered off the response path
        before = len(fake.requests)
        again = await _ask(client, "cascade", "an  UNSURE question")  # near-identical: same fingerprint
    assert again.headers["x-sluice-route"] == "cascade:remembered"
    assert [r["json"]["model"] for r in fake.requests[before:]] == ["fake-large"]
    await routed.flush_ledger()
    escalated = await _ledger(database_url, first.headers["x-request-id"])
    remembered = await _ledger(database_url, again.headers["x-request-id"])
    assert escalated["cost_usd"] == Decimal(first.headers["x-sluice-cost-usd"])
    assert escalated["cost_usd"] > remembered["cost_usd"], "the escalation paid for both calls"
    assert await _metric(routed, "sluice_discarded_cost_usd_total") > 0
    assert await _metric(routed, "sluice_route_decisions_total", route="cascade", decision="cascade:remembered") == 1


async def test_a_streaming_cascade_replays_a_confident_small_answer_and_streams_an_escalation(
    routed: Gateway, fake: FakeUpstream
) -> None:
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        for text, decision in (("easy stream", "cascade:small"), ("unsure stream", "cascade:escalated")):
            raw = await client.chat.completions.with_raw_response.create(
                model="cascade", messages=[{"role": "user", "content": text}], stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = [chunk async for chunk in raw.parse()]
            assert raw.headers["x-sluice-route"] == decision
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage is not None
    assert (fake.calls["fake-small"], fake.calls["fake-large"]) == (2, 1)


async def test_an_undecodable_cache_entry_is_a_miss_answered_upstream(
    routed: Gateway, fake: FakeUpstream, redis_url: str
) -> None:
    """A cache entry that cannot be decoded (poisoned or from another version) is a miss, never a 500."""
    _, key = await routed.tenant_key()
    async with _client(routed, key) as client:
        await _ask(client, "cached", "poison me", **DETERMINISTIC)
    client_ = aioredis.Redis.from_url(redis_url)
    poisoned = 0
    async for name in client_.scan_iter(match="sluice:cache:*:r:*"):
        await client_.set(name, b"\x00garbage", keepttl=True)
        poisoned += 1
    assert poisoned == 1
    await client_.aclose()
    async with httpx.AsyncClient(base_url=routed.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        body = {"model": "cached", "messages": [{"role": "user", "content": "poison me"}], **DETERMINISTIC}
        response = await http.post("/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert response.headers["x-sluice-cache"] == "miss" and fake.calls["fake-large"] == 2
