"""Chat-completion bodies Sluice produces itself (the simulator, cache replays, a cascade's kept answer, errors)
validate against the official OpenAI spec, every streamed `data:` payload included (issue 6, acceptance 5;
the Responses API's shapes are checked in test_responses.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.harness import Gateway, file_config, running_gateway
from tests.openai_spec import validate

EXTRA = """
[[models]]
name = "auto"
route = { policy = "cascade", small = "sim-small", large = "sim-large", threshold = 0.0 }
cache = { enabled = true }
"""
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
BODIES: dict[str, dict[str, Any]] = {
    "text": {"messages": [{"role": "user", "content": "Explain SSE briefly."}]},
    "logprobs": {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2},
    "tools": {"messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS, "tool_choice": "required"},
    "two-choices": {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 5},
}


@pytest.fixture(name="conforming")
async def fx_conforming(database_url: str, redis_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, redis_url, file_config(extra=EXTRA)) as gateway:
        yield gateway


async def _completion(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    response = await http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


async def _chunks(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[list[Any], httpx.Headers]:
    payloads = []
    async with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                payloads.append(msgspec.json.decode(line[6:]))
        return payloads, response.headers


@pytest.mark.parametrize("shape", BODIES)
@pytest.mark.parametrize("model", ["small", "auto"], ids=["simulator", "cascade-and-cache"])
async def test_completions_and_every_chunk_validate(conforming: Gateway, shape: str, model: str) -> None:
    _, key = await conforming.tenant_key()
    body = {"model": model, "temperature": 0, **BODIES[shape]}
    async with httpx.AsyncClient(base_url=conforming.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        plain = await _completion(http, body)
        validate(plain.json(), "CreateChatCompletionResponse")
        streamed, headers = await _chunks(http, {**body, "stream_options": {"include_usage": True}})
    if model == "auto":
        assert headers["x-sluice-cache"] == "hit", "the stream was replayed from the stored answer"
    assert streamed
    for chunk in streamed:
        validate(chunk, "CreateChatCompletionStreamResponse")


async def test_error_bodies_validate(conforming: Gateway) -> None:
    _, key = await conforming.tenant_key()
    async with httpx.AsyncClient(base_url=conforming.base_url, headers={"authorization": f"Bearer {key}"}) as http:
        for body in ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, {"model": "small"}, []):
            response = await http.post("/chat/completions", json=body)
            assert response.status_code in (400, 404)
            validate(response.json(), "ErrorResponse")
