"""The scorer artifact round-trips exactly, refuses what it cannot trust, and predicts from the prompt alone."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from gateway.routing.dataset import LabelledPrompt
from gateway.routing.errors import DatasetError, ScorerArtifactError
from gateway.routing.evaluation import auroc
from gateway.routing.scorer import FORMAT, VERSION, Scorer, ScorerArtifact, load_artifact, save
from gateway.routing.train import TrainingOptions, train
from gateway.schema.openai import Message


def saved(scorer: Scorer, tmp_path: Path) -> Path:
    path = tmp_path / "scorer.json"
    save(scorer.artifact, path)
    return path


def test_artifact_round_trips_with_version_time_hash_spec_and_metrics(scorer: Scorer, tmp_path: Path) -> None:
    loaded = load_artifact(saved(scorer, tmp_path))
    assert loaded == scorer.artifact
    assert (loaded.format, loaded.version) == (FORMAT, VERSION)
    assert loaded.created_at.endswith("+00:00")
    assert len(loaded.content_hash) == 64
    assert loaded.spec.visible == ["length", "code", "math", "steps"]
    assert len(loaded.word_weights) == loaded.spec.buckets
    assert loaded.metrics.validation_auroc is not None


def test_predictions_are_identical_after_reload(
    scorer: Scorer, halves: tuple[list[LabelledPrompt], list[LabelledPrompt]], tmp_path: Path
) -> None:
    reloaded = Scorer.load(saved(scorer, tmp_path))
    _, held_out = halves
    prompts = [record.prompt for record in held_out[:300]]
    assert [reloaded.predict(p) for p in prompts] == [scorer.predict(p) for p in prompts]
    assert reloaded.version == scorer.version


def test_changed_weights_are_refused_for_a_content_hash_mismatch(scorer: Scorer, tmp_path: Path) -> None:
    artifact = scorer.artifact
    tampered = msgspec.structs.replace(artifact, bias=artifact.bias + 0.5)
    path = tmp_path / "scorer.json"
    save(tampered, path)
    with pytest.raises(ScorerArtifactError, match="content hash mismatch"):
        Scorer.load(path)


def test_another_format_version_is_refused(scorer: Scorer, tmp_path: Path) -> None:
    path = tmp_path / "scorer.json"
    save(msgspec.structs.replace(scorer.artifact, version=VERSION + 1), path)
    with pytest.raises(ScorerArtifactError, match=f"version {VERSION + 1} is not supported"):
        Scorer.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not a scorer artifact"), (b'{"format": "sluice.router.scorer", "version": 1}', "invalid")],
    ids=["garbled", "incomplete"],
)
def test_an_unreadable_artifact_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "scorer.json"
    path.write_bytes(content)
    with pytest.raises(ScorerArtifactError, match=message):
        Scorer.load(path)


def test_a_missing_artifact_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ScorerArtifactError, match=r"nope\.json"):
        Scorer.load(tmp_path / "nope.json")


def test_training_is_deterministic(halves: tuple[list[LabelledPrompt], list[LabelledPrompt]]) -> None:
    training, _ = halves
    options = TrainingOptions(epochs=2, buckets=512)
    first, second = train(training[:1000], options), train(training[:1000], options)
    assert first.content_hash == second.content_hash


def test_scorer_ranks_held_out_prompts_better_than_chance(
    scorer: Scorer, halves: tuple[list[LabelledPrompt], list[LabelledPrompt]]
) -> None:
    _, held_out = halves
    value = auroc([scorer.predict(r.prompt) for r in held_out], [r.small_correct for r in held_out])
    assert value > 0.65


def test_scorer_reads_a_chat_requests_messages(scorer: Scorer) -> None:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="What is 2 + 2?")]
    assert scorer.predict_messages(messages) == scorer.predict("Be brief.\nWhat is 2 + 2?")


def test_training_needs_both_labels() -> None:
    records = [LabelledPrompt(prompt=f"question {i}", small_correct=True) for i in range(20)]
    with pytest.raises(DatasetError, match="right and prompts it got wrong"):
        train(records, TrainingOptions(validation_share=0))


def test_artifact_is_plain_json_with_the_documented_top_level_fields(scorer: Scorer, tmp_path: Path) -> None:
    document = msgspec.json.decode(saved(scorer, tmp_path).read_bytes())
    assert list(document) == list(ScorerArtifact.__struct_fields__)
