"""A `scored` route on the simulator: the scorer trained by the offline tools picks the deployment before any
call, and the gateway says which and how sure it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from gateway.routing.dataset import label
from gateway.routing.prompts import generate
from gateway.routing.scorer import Scorer, save
from gateway.routing.train import train
from tests.harness import Gateway, file_config, running_gateway


@pytest.fixture(name="scorer_path", scope="module")
async def fx_scorer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scorer") / "scorer.json"
    save(train(await label(generate(2000, seed=3))), path)
    return path


@pytest.fixture(name="scored")
async def fx_scored(database_url: str, redis_url: str, scorer_path: Path) -> AsyncIterator[Gateway]:
    extra = f"""
[[models]]
name = "auto"
route = {{ policy = "scored", small = "sim-small", large = "sim-large", scorer = "{scorer_path}", threshold = 0.5 }}
"""
    async with running_gateway(database_url, redis_url, file_config(extra=extra)) as gateway:
        yield gateway


async def test_the_scorer_picks_the_model_before_the_call_and_the_headers_say_so(
    scored: Gateway, scorer_path: Path
) -> None:
    scorer = Scorer.load(scorer_path)
    prompts = list(generate(200, seed=11))
    chances = {prompt: scorer.predict(prompt) for prompt in prompts}
    easy = max(prompts, key=chances.__getitem__)
    hard = min(prompts, key=chances.__getitem__)
    assert chances[easy] >= 0.5 > chances[hard], "the sample spans both sides of the threshold"
    _, key = await scored.tenant_key()
    async with openai.AsyncOpenAI(base_url=scored.base_url, api_key=key, max_retries=0) as client:
        for prompt, decision, model in ((easy, "scored:small", "small"), (hard, "scored:large", "large")):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            assert raw.headers["x-sluice-route"] == decision
            assert raw.headers["x-sluice-model"] == model
            assert float(raw.headers["x-sluice-confidence"]) == pytest.approx(chances[prompt], abs=1e-4)


async def test_a_missing_scorer_artifact_is_a_configuration_error(tmp_path: Path) -> None:
    from gateway.settings import ConfigError, load_file_config

    config = tmp_path / "sluice.toml"
    config.write_text(
        Path(__file__).resolve().parents[2].joinpath("gateway", "sluice.example.toml").read_text()
        + '\n[[models]]\nname = "scored"\n'
        + 'route = { policy = "scored", small = "sim-small", large = "sim-large", scorer = "missing.json" }\n'
    )
    with pytest.raises(ConfigError, match=r"route\.scorer: no scorer artifact"):
        load_file_config(config)
