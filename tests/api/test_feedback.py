"""Feedback capture and training from served traffic: tenants rate answers (`POST /v1/feedback`), confidence-routed
usage records keep their prompt's features, and `sluice router train --from-feedback` learns a scorer from them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.routing.difficulty import judge
from gateway.routing.prompts import generate
from gateway.routing.scorer import Scorer
from tests.harness import Gateway, file_config, running_gateway

EXTRA = """
[[models]]
name = "auto"
route = { policy = "cascade", small = "sim-small", large = "sim-large", threshold = 0.0 }
"""
PROMPTS = 240


@pytest.fixture(name="routed")
async def fx_routed(database_url: str, redis_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, redis_url, file_config(extra=EXTRA)) as gateway:
        yield gateway


async def _ask(http: httpx.AsyncClient, model: str, prompt: str) -> str:
    response = await http.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}]}
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


async def _rate(http: httpx.AsyncClient, request_id: str, rating: str) -> httpx.Response:
    return await http.post("/v1/feedback", json={"request_id": request_id, "rating": rating})


async def test_rated_small_answers_train_a_scorer_and_other_tenants_ratings_are_ignored(
    routed: Gateway, database_url: str, tmp_path: Path
) -> None:
    _, key = await routed.tenant_key("rater")
    _, other_key = await routed.tenant_key("stranger")
    prompts = list(generate(PROMPTS, seed=5))
    async with (
        httpx.AsyncClient(base_url=routed.base, headers={"authorization": f"Bearer {key}"}) as http,
        httpx.AsyncClient(base_url=routed.base, headers={"authorization": f"Bearer {other_key}"}) as stranger,
    ):
        ids = await asyncio.gather(*(_ask(http, "auto", prompt) for prompt in prompts))
        for request_id, prompt in zip(ids, prompts, strict=True):
            rated = await _rate(http, request_id, "good" if judge(prompt, "small").right else "bad")
            assert rated.status_code == 200 and rated.json()["rating"] in ("good", "bad")
        fixed_id = await _ask(http, "small", "a fixed route keeps no features")
        await _rate(http, fixed_id, "good")
        for request_id in ids[:40]:  # a stranger's ratings of someone else's requests match nothing
            assert (await _rate(stranger, request_id, "bad")).status_code == 200
    await routed.flush_ledger()
    conn = await asyncpg.connect(database_url)
    try:
        kept = await conn.fetchval(
            "SELECT count(*) FROM usage_records WHERE routing_features IS NOT NULL AND route = 'cascade:small'"
        )
        fixed = await conn.fetchval(
            "SELECT routing_features FROM usage_records WHERE request_id = $1", uuid.UUID(fixed_id)
        )
    finally:
        await conn.close()
    assert kept == PROMPTS and fixed is None
    scrape = (await routed.admin.get("/metrics")).text
    rated = sum(
        float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines() if line.startswith("sluice_feedback_total{")
    )
    assert rated == PROMPTS + 1 + 40

    out = tmp_path / "scorer.json"
    result = await asyncio.to_thread(  # the CLI runs its own event loop
        CliRunner().invoke,
        main,
        ["router", "train", "--from-feedback", "1", "--out", str(out), "--validation-share", "0"],
        env={"SLUICE_DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    assert f"{PROMPTS:,} rated small-model answers" in result.output
    scorer = Scorer.load(out)
    assert scorer.artifact.metrics.examples == PROMPTS, "the stranger's ratings were not joined"
    assert scorer.artifact.metrics.train_auroc > 0.6


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "not-a-uuid", "rating": "good"},
        {"request_id": str(uuid.uuid4()), "rating": "meh"},
        {"request_id": str(uuid.uuid4()), "rating": "good", "stars": 5},
        {"request_id": str(uuid.uuid4()), "rating": "good", "comment": "x" * 2001},
        {"rating": "good"},
        {"request_id": str(uuid.uuid4()), "rating": "good", "comment": "a\u0000b"},
    ],
    ids=["bad-id", "bad-rating", "unknown-field", "long-comment", "no-id", "nul-comment"],
)
async def test_bad_feedback_is_a_clear_400(routed: Gateway, body: dict[str, object]) -> None:
    _, key = await routed.tenant_key()
    async with httpx.AsyncClient(base_url=routed.base, headers={"authorization": f"Bearer {key}"}) as http:
        response = await http.post("/v1/feedback", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


async def test_feedback_needs_a_key(routed: Gateway) -> None:
    async with httpx.AsyncClient(base_url=routed.base) as http:
        response = await http.post("/v1/feedback", json={"request_id": str(uuid.uuid4()), "rating": "good"})
    assert response.status_code == 401
