"""A cascade's prompt prior: the combiner is fitted right, ranks better than the confidence alone, is covered by
the artifact's content hash, and a cascade route refuses a scorer that has none."""

from __future__ import annotations

import math
import random
from pathlib import Path

import msgspec
import pytest

from gateway.pipeline.route import load_scorer
from gateway.routing.calibrate import outcomes
from gateway.routing.combine import CascadeCombiner, fit_combiner
from gateway.routing.dataset import LabelledPrompt
from gateway.routing.errors import DatasetError, ScorerArtifactError
from gateway.routing.evaluation import auroc
from gateway.routing.scorer import Scorer, content_hash, load_artifact, save
from gateway.routing.train import train
from gateway.settings import ConfigError

Halves = tuple[list[LabelledPrompt], list[LabelledPrompt]]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_fit_recovers_the_weights_that_made_the_labels() -> None:
    rng = random.Random(3)
    truth = CascadeCombiner(bias=-0.7, confidence_weight=1.3, prior_weight=0.6)
    confidences = [sigmoid(rng.gauss(0, 2)) for _ in range(20_000)]
    priors = [sigmoid(rng.gauss(0, 1)) for _ in range(20_000)]
    labels = [rng.random() < truth.combine(c, p) for c, p in zip(confidences, priors, strict=True)]
    fitted = fit_combiner(confidences, priors, labels)
    assert fitted.bias == pytest.approx(truth.bias, abs=0.08)
    assert fitted.confidence_weight == pytest.approx(truth.confidence_weight, abs=0.08)
    assert fitted.prior_weight == pytest.approx(truth.prior_weight, abs=0.08)


def test_fit_needs_both_labels_and_survives_a_perfect_separator() -> None:
    with pytest.raises(DatasetError, match="right and wrong"):
        fit_combiner([0.9, 0.8], [0.5, 0.5], [True, True])
    separated = fit_combiner([0.1, 0.2, 0.8, 0.9], [0.5] * 4, [False, False, True, True])
    assert all(math.isfinite(w) for w in (separated.bias, separated.confidence_weight, separated.prior_weight))
    assert separated.combine(0.9, 0.5) > 0.5 > separated.combine(0.1, 0.5)


def test_the_prior_ranks_held_out_answers_better_than_the_confidence_alone(scorer: Scorer, halves: Halves) -> None:
    _, held_out = halves
    assert scorer.artifact.cascade is not None, "training data with confidences gives a combiner"
    labels = [r.small_correct for r in held_out]
    alone = auroc([r.small_confidence or 0.0 for r in held_out], labels)
    combined = auroc([scorer.with_prior(r.small_confidence or 0.0, r.prompt) for r in held_out], labels)
    assert combined > alone + 0.01, (combined, alone)
    metrics = scorer.artifact.metrics
    assert metrics.cascade_auroc is not None and metrics.confidence_auroc is not None
    assert metrics.cascade_auroc > metrics.confidence_auroc


def test_the_combiner_is_covered_by_the_content_hash(scorer: Scorer, tmp_path: Path) -> None:
    combiner = scorer.artifact.cascade
    assert combiner is not None
    tampered = msgspec.structs.replace(
        scorer.artifact, cascade=msgspec.structs.replace(combiner, prior_weight=combiner.prior_weight + 1)
    )
    path = tmp_path / "scorer.json"
    save(tampered, path)
    with pytest.raises(ScorerArtifactError, match="content hash mismatch"):
        Scorer.load(path)


def test_a_scorer_without_confidences_has_no_combiner_and_hashes_as_before(halves: Halves, tmp_path: Path) -> None:
    """Artifacts written before combiners existed (no `cascade` field) still load: their hash is unchanged."""
    training, _ = halves
    artifact = train([msgspec.structs.replace(r, small_confidence=None) for r in training])
    assert artifact.cascade is None
    spec, label = artifact.spec, artifact.label
    expected = content_hash(spec, artifact.bias, artifact.visible_weights, artifact.word_weights, label)
    assert artifact.content_hash == expected
    document = msgspec.json.decode(msgspec.json.encode(artifact))
    del document["cascade"]
    path = tmp_path / "old.json"
    path.write_bytes(msgspec.json.encode(document))
    assert load_artifact(path) == artifact
    with pytest.raises(ConfigError, match="no cascade combiner"):
        load_scorer(str(path), for_cascade=True)
    assert load_scorer(str(path), for_cascade=False).version == artifact.content_hash[:12]
    with pytest.raises(DatasetError, match="no cascade combiner"):
        outcomes("cascade", training[:10], Scorer(artifact))


def test_cascade_calibration_with_a_scorer_scores_what_the_route_decides_on(scorer: Scorer, halves: Halves) -> None:
    _, held_out = halves
    sample = held_out[:50]
    scores = [o.score for o in outcomes("cascade", sample, scorer)]
    assert scores == [scorer.with_prior(r.small_confidence or 0.0, r.prompt) for r in sample]
    assert [o.score for o in outcomes("cascade", sample)] == [r.small_confidence for r in sample]


def test_a_bad_artifact_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "scorer.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not supported"):
        load_scorer(str(path), for_cascade=False)
