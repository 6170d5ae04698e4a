"""A cascade's prompt prior: the combiner is fitted right, ranks better than the confidence alone, is covered by
the artifact's content hash, and a cascade route refuses a scorer that has none."""

from __future__ import annotations

import hashlib
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
from gateway.routing.scorer import Scorer, load_artifact, save
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


def test_signals_are_read_within_the_range_training_saw() -> None:
    """A real upstream's logprob of 0 (confidence 1.0) counts as 0.999, the simulator's most confident answer."""
    combiner = CascadeCombiner(bias=-1.0, confidence_weight=1.0, prior_weight=0.7)
    assert combiner.combine(1.0, 0.2) == combiner.combine(0.999, 0.2)
    assert combiner.combine(0.0, 0.9) == combiner.combine(0.001, 0.9)


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


def test_a_scorer_without_confidences_is_the_artifact_sluice_wrote_before_combiners(
    halves: Halves, tmp_path: Path
) -> None:
    """Both ways compatible: the hash is the earlier formula (blake2b-256 of the JSON array `[label, spec, bias,
    visible_weights, word_weights]`), and the file has no field the earlier reader (`forbid_unknown_fields`)
    would refuse, so rolling the binary back keeps a retrained scorer loadable."""
    training, _ = halves
    artifact = train([msgspec.structs.replace(r, small_confidence=None) for r in training])
    assert artifact.cascade is None
    earlier = [artifact.label, artifact.spec, artifact.bias, artifact.visible_weights, artifact.word_weights]
    assert artifact.content_hash == hashlib.blake2b(msgspec.json.encode(earlier), digest_size=32).hexdigest()
    path = tmp_path / "plain.json"
    save(artifact, path)
    document = msgspec.json.decode(path.read_bytes())
    earlier_fields = ["format", "version", "created_at", "content_hash", "label", "spec", "bias"]
    assert list(document) == [*earlier_fields, "visible_weights", "word_weights", "metrics"]
    assert not {"confidence_auroc", "cascade_auroc"} & set(document["metrics"])
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
