"""One pipeline, four wire formats: chat completions, Responses, Anthropic Messages and embeddings are each
refused by a request limit and by a budget, answered from the decision cache, and routed (issue 6, acceptance 6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.harness import Gateway, file_config, running_gateway

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
route = { policy = "fallback", deployments = ["sim-embed"] }
cache = { enabled = true }
[[models]]
name = "chat"
route = { policy = "fallback", deployments = ["sim-small", "sim-large"] }
cache = { enabled = true }
"""

# endpoint: (path, body, where the error's type is)
ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "responses": ("/v1/responses", {"model": "chat", "temperature": 0, "input": "hi", "store": False}),
    "messages": (
        "/v1/messages",
        {"model": "chat", "temperature": 0, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "embeddings": ("/v1/embeddings", {"model": "embed", "input": "hi"}),
}


@pytest.fixture(name="governed")
async def fx_governed(database_url: str, redis_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, redis_url, file_config(extra=EXTRA)) as gateway:
        yield gateway


async def _post(gateway: Gateway, key: str, endpoint: str) -> httpx.Response:
    path, body = ENDPOINTS[endpoint]
    async with httpx.AsyncClient(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}) as http:
        return await http.post(path, json=body)


def _error_type(endpoint: str, response: httpx.Response) -> str:
    error = response.json()["error"]
    return str(error["type"] if endpoint == "messages" else error["code"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_request_limit_refuses_the_second_request(governed: Gateway, endpoint: str) -> None:
    _, key = await governed.tenant_key(rpm=1)
    first = await _post(governed, key, endpoint)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    second = await _post(governed, key, endpoint)
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert _error_type(endpoint, second) == ("rate_limit_error" if endpoint == "messages" else "rate_limit_exceeded")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_budget_refuses_what_it_cannot_cover_and_says_not_to_retry(governed: Gateway, endpoint: str) -> None:
    _, key = await governed.tenant_key(budget_usd="0.000000001")
    refused = await _post(governed, key, endpoint)
    assert refused.status_code == 429, refused.text
    assert refused.headers["x-should-retry"] == "false"
    assert _error_type(endpoint, refused) == ("rate_limit_error" if endpoint == "messages" else "budget_exceeded")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_the_decision_cache_and_the_route_apply(governed: Gateway, endpoint: str) -> None:
    _, key = await governed.tenant_key()
    first = await _post(governed, key, endpoint)
    second = await _post(governed, key, endpoint)
    assert (first.status_code, second.status_code) == (200, 200), second.text
    assert first.headers["x-sluice-route"] == "fallback:1"
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("miss", "hit")
