"""`/v1/responses` through Sluice: the OpenAI Agents SDK with its default (Responses) model, the openai SDK's
Responses calls streamed and not, stored responses scoped to their tenant, and the spec's shapes."""

from __future__ import annotations

import uuid
from typing import Any

import agents
import asyncpg
import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import Gateway
from tests.openai_spec import validate


@pytest.fixture(autouse=True, scope="module")
def _no_agent_tracing() -> None:
    agents.set_tracing_disabled(True)  # else the SDK exports traces to OpenAI


def _client(gateway: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


async def _records(database_url: str, tenant_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT * FROM usage_records WHERE tenant_id = $1 ORDER BY created_at", uuid.UUID(tenant_id)
        )
    finally:
        await conn.close()


def _agent(model: str, client: openai.AsyncOpenAI, cities: list[str], **settings: Any) -> agents.Agent[Any]:
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"It is sunny in {city}."

    return agents.Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model=model, openai_client=client),
        model_settings=agents.ModelSettings(**settings),
    )


@pytest.mark.parametrize("model", ["small", "fake-agent"], ids=["simulator", "chat-only-upstream"])
async def test_a_multi_turn_tool_using_agent_runs_through_the_responses_api(
    gateway: Gateway, fake: FakeUpstream, database_url: str, model: str
) -> None:
    """The Agents SDK with its default model settings: its default model class speaks the Responses API."""
    tenant_id, key = await gateway.tenant_key()
    cities: list[str] = []
    async with _client(gateway, key) as client:
        agent = _agent(model, client, cities)
        first = await agents.Runner.run(agent, "What is the weather in Paris?")
        second = await agents.Runner.run(agent, "And what about Berlin?", previous_response_id=first.last_response_id)
    assert cities and first.final_output and second.final_output
    calls = len(first.raw_responses) + len(second.raw_responses)
    assert calls >= 4, "each run called the tool, then answered"
    await gateway.flush_ledger()
    records = await _records(database_url, tenant_id)
    assert len(records) == calls, "one usage record per upstream call"
    assert all(r["cost_usd"] > 0 and r["prompt_tokens"] > 0 for r in records)
    if model == "fake-agent":
        assert fake.calls["fake-agent"] == calls


async def test_a_streamed_agent_run_gets_typed_events_and_is_metered(gateway: Gateway, database_url: str) -> None:
    tenant_id, key = await gateway.tenant_key()
    cities: list[str] = []
    async with _client(gateway, key) as client:
        agent = _agent("fake-agent", client, cities)
        run = agents.Runner.run_streamed(agent, "Weather in Oslo?")
        kinds = {event.type async for event in run.stream_events()}
    assert "raw_response_event" in kinds and run.final_output and cities
    await gateway.flush_ledger()
    assert len(await _records(database_url, tenant_id)) == len(run.raw_responses)


async def test_responses_validate_against_the_spec_streamed_and_not(gateway: Gateway) -> None:
    _, key = await gateway.tenant_key()
    async with httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        plain = await http.post("/responses", json={"model": "small", "input": "Say hi", "instructions": "Be brief."})
        assert plain.status_code == 200, plain.text
        validate(plain.json(), "Response")
        assert plain.headers["x-sluice-cost-usd"]
        events: list[dict[str, Any]] = []
        async with http.stream("POST", "/responses", json={"model": "small", "input": "Say hi", "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(httpx.Response(200, content=line[6:]).json())
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_previous_response_id_continues_on_a_chat_only_upstream_and_is_private_to_its_tenant(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    _, key = await gateway.tenant_key("owner")
    _, other_key = await gateway.tenant_key("other")
    async with _client(gateway, key) as client:
        first = await client.responses.create(model="fake-ok", input="My name is Ada.", instructions="Be kind.")
        second = await client.responses.create(model="fake-ok", input="What is my name?", previous_response_id=first.id)
        assert second.output_text
        fetched = await client.responses.retrieve(first.id)
        assert fetched.id == first.id and fetched.output_text == first.output_text
    sent = fake.requests[-1]["json"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"], "history, without the old instructions"
    assert sent[0]["content"] == "My name is Ada." and "Hello" in sent[1]["content"]
    async with _client(gateway, other_key) as intruder:
        with pytest.raises(openai.NotFoundError):
            await intruder.responses.create(model="fake-ok", input="Hi", previous_response_id=first.id)
        with pytest.raises(openai.NotFoundError):
            await intruder.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            await intruder.responses.delete(first.id)
    async with _client(gateway, key) as client:
        await client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)


async def test_store_false_keeps_nothing(gateway: Gateway) -> None:
    _, key = await gateway.tenant_key()
    async with _client(gateway, key) as client:
        response = await client.responses.create(model="small", input="Forget me", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "small", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": "small", "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"model": "small"}, "input"),
        ({"input": "x"}, "model"),
    ],
    ids=["unsupported-tool", "unknown-previous", "no-input", "no-model"],
)
async def test_bad_responses_requests_get_a_clear_error(gateway: Gateway, body: dict[str, Any], param: str) -> None:
    _, key = await gateway.tenant_key()
    async with httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        response = await http.post("/responses", json=body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


async def test_an_answer_that_cannot_be_stored_is_still_returned_and_says_so(
    gateway: Gateway, database_url: str
) -> None:
    """It was answered and charged already: a 503 now would make the client pay twice on its retry."""
    _, key = await gateway.tenant_key()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ALTER TABLE stored_responses RENAME TO stored_responses_away")
        async with httpx.AsyncClient(base_url=gateway.base_url, headers={"authorization": f"Bearer {key}"}) as http:
            response = await http.post("/responses", json={"model": "small", "input": "Keep me"})
    finally:
        await conn.execute("ALTER TABLE stored_responses_away RENAME TO stored_responses")
        await conn.close()
    assert response.status_code == 200 and response.json()["output"]
    assert response.headers["x-sluice-stored"] == "false"
