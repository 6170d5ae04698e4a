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


@pytest.fixture(name="cascaded")
async def fx_cascaded(database_url: str, redis_url: str, scorer_path: Path) -> AsyncIterator[Gateway]:
    extra = f"""
[[models]]
name = "auto"
route = {{ policy = "cascade", small = "sim-small", large = "sim-large", scorer = "{scorer_path}", threshold = 0.5, \
remember_escalations_s = 0 }}
"""
    async with running_gateway(database_url, redis_url, file_config(extra=extra)) as gateway:
        yield gateway


async def test_a_cascade_with_a_prompt_prior_decides_on_the_combined_score(
    cascaded: Gateway, scorer_path: Path
) -> None:
    """The small answer's confidence and the scorer's prior for the prompt decide together: a prompt whose
    confidence alone would have been kept is escalated (and the other way round) when the prior says so."""
    scorer = Scorer.load(scorer_path)
    records = await label(generate(300, seed=12))
    combined = {r.prompt: scorer.with_prior(r.small_confidence or 0.0, r.prompt) for r in records}
    plain = {r.prompt: r.small_confidence or 0.0 for r in records}
    overruled_up = next(p for p in combined if combined[p] >= 0.5 > plain[p])
    overruled_down = next(p for p in combined if plain[p] >= 0.5 > combined[p])
    _, key = await cascaded.tenant_key()
    async with openai.AsyncOpenAI(base_url=cascaded.base_url, api_key=key, max_retries=0) as client:
        for prompt, decision in ((overruled_up, "cascade:small"), (overruled_down, "cascade:escalated")):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            assert raw.headers["x-sluice-route"] == decision
            assert float(raw.headers["x-sluice-confidence"]) == pytest.approx(combined[prompt], abs=1e-4)
            # A streaming request decides the same way (the small answer is buffered, then replayed or escalated).
            async with client.chat.completions.with_streaming_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}], stream=True
            ) as streamed:
                assert streamed.headers["x-sluice-route"] == decision
                assert float(streamed.headers["x-sluice-confidence"]) == pytest.approx(combined[prompt], abs=1e-4)
                chunks = [chunk async for chunk in await streamed.parse()]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == raw.parse().choices[0].message.content


async def test_a_cascade_scorer_path_is_relative_to_the_configuration_file(tmp_path: Path, scorer_path: Path) -> None:
    from gateway.pipeline.route import check_scorers
    from gateway.settings import CascadeRoute, load_file_config

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "scorer.json").write_bytes(scorer_path.read_bytes())
    config = tmp_path / "sluice.toml"
    config.write_text(
        Path(__file__).resolve().parents[2].joinpath("gateway", "sluice.example.toml").read_text()
        + '\n[[models]]\nname = "cascaded"\n'
        + 'route = { policy = "cascade", small = "sim-small", large = "sim-large", scorer = "models/scorer.json" }\n'
    )
    loaded = load_file_config(config)
    route = next(alias.route for alias in loaded.models if alias.name == "cascaded")
    assert isinstance(route, CascadeRoute)
    assert route.scorer == str((tmp_path / "models" / "scorer.json").resolve())
    check_scorers(loaded)


async def test_config_check_verifies_the_scorers_a_cascade_needs(tmp_path: Path, scorer_path: Path) -> None:
    """A cascade's scorer must carry a combiner: `sluice config check` (and `sluice serve`) refuse one without."""
    from click.testing import CliRunner

    from gateway.cli import main
    from gateway.routing.scorer import build_artifact, load_artifact

    trained = load_artifact(scorer_path)
    assert trained.cascade is not None
    without = tmp_path / "without.json"
    weights = (trained.bias, trained.visible_weights, trained.word_weights)
    save(build_artifact(trained.spec, *weights, trained.metrics), without)
    config = tmp_path / "sluice.toml"
    example = Path(__file__).resolve().parents[2].joinpath("gateway", "sluice.example.toml").read_text()
    for artifact, code, message in ((scorer_path, 0, "ok ("), (without, 2, "no cascade combiner")):
        config.write_text(
            example + '\n[[models]]\nname = "cascaded"\n'
            f'route = {{ policy = "cascade", small = "sim-small", large = "sim-large", scorer = "{artifact}" }}\n'
        )
        result = CliRunner().invoke(main, ["config", "check", str(config)])
        assert result.exit_code == code, result.output
        assert message in result.output
    # `sluice serve` refuses it the same way, before starting a database or a worker.
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "no cascade combiner" in result.output
