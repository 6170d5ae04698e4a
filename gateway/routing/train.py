"""`sluice router train`: fit the pre-call scorer (logistic regression) on labelled prompts, in plain Python.

The input is any sequence of `dataset.LabelledPrompt`, whatever its source (a labelled JSONL file today; usage
records joined with feedback labels later), so a new source only has to yield those. A few thousand prompts
train in seconds with AdaGrad SGD, and nothing heavier than the standard library is needed to train or serve.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.routing.dataset import LabelledPrompt, split
from gateway.routing.errors import DatasetError
from gateway.routing.evaluation import auroc
from gateway.routing.features import VISIBLE_FEATURES, hashed_words, visible_features
from gateway.routing.scorer import FeatureSpec, Scorer, ScorerArtifact, TrainingMetrics, build_artifact

_EPSILON: Final = 1e-8


class TrainingOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    buckets: int = 4096
    """Hash buckets for words and word pairs."""
    epochs: int = 4
    learning_rate: float = 0.2
    """AdaGrad's base step."""
    l2: float = 0.03
    """L2 penalty per update on the weights a prompt touches (keeps rare words from memorising labels).
    This and `epochs` were chosen by validation log loss on a simulated set (seed 99) the benchmark never uses."""
    validation_share: float = 0.2
    """Share of prompts held out (by prompt hash) to report validation AUROC and log loss; 0 to fit on all."""
    seed: int = 0
    """Seed of the shuffling order: the same data and options give the same weights."""


class _Example(msgspec.Struct):
    visible: tuple[float, float, float, float]
    words: dict[int, float]
    label: float


def train(examples: Sequence[LabelledPrompt], options: TrainingOptions | None = None) -> ScorerArtifact:
    options = options or TrainingOptions()
    fit_on, validate_on = (
        split(examples, options.validation_share, "validation") if options.validation_share else (examples, [])
    )
    if not fit_on:
        raise DatasetError("no labelled prompts to train on")
    labels = {record.small_correct for record in fit_on}
    if len(labels) < 2:
        raise DatasetError("training needs prompts the small model got right and prompts it got wrong")
    fitted = [_featurise(record, options.buckets) for record in fit_on]
    mean = [statistics.fmean(example.visible[i] for example in fitted) for i in range(len(VISIBLE_FEATURES))]
    scale = [statistics.pstdev(example.visible[i] for example in fitted) or 1.0 for i in range(len(VISIBLE_FEATURES))]
    spec = FeatureSpec(buckets=options.buckets, visible=list(VISIBLE_FEATURES), visible_mean=mean, visible_scale=scale)
    bias, visible_weights, word_weights = _fit(fitted, spec, options)
    metrics = TrainingMetrics(
        examples=len(fit_on),
        validation_examples=len(validate_on),
        small_correct_share=sum(record.small_correct for record in fit_on) / len(fit_on),
        train_auroc=0.0,
        validation_auroc=None,
        validation_log_loss=None,
        epochs=options.epochs,
        l2=options.l2,
    )
    artifact = build_artifact(spec, bias, visible_weights, word_weights, metrics)
    # Measured with the serving code path; metrics are outside the content hash, so filling them in keeps it.
    scorer = Scorer(artifact)
    train_auroc = auroc([scorer.predict(record.prompt) for record in fit_on], [r.small_correct for r in fit_on])
    validation_auroc = validation_log_loss = None
    if len({record.small_correct for record in validate_on}) == 2:
        predictions = [scorer.predict(record.prompt) for record in validate_on]
        validation_auroc = auroc(predictions, [record.small_correct for record in validate_on])
        validation_log_loss = statistics.fmean(
            -math.log(max(_EPSILON, p if record.small_correct else 1 - p))
            for p, record in zip(predictions, validate_on, strict=True)
        )
    metrics = msgspec.structs.replace(
        metrics, train_auroc=train_auroc, validation_auroc=validation_auroc, validation_log_loss=validation_log_loss
    )
    return msgspec.structs.replace(artifact, metrics=metrics)


def _featurise(record: LabelledPrompt, buckets: int) -> _Example:
    return _Example(
        visible=visible_features(record.prompt).values(),
        words=hashed_words(record.prompt, buckets),
        label=1.0 if record.small_correct else 0.0,
    )


def _fit(
    examples: list[_Example], spec: FeatureSpec, options: TrainingOptions
) -> tuple[float, list[float], list[float]]:
    """AdaGrad SGD on the log loss; visible features standardised, words as given. Deterministic per seed."""
    rng = random.Random(options.seed)  # noqa: S311  # a reproducible shuffling order, not a secret
    visible_count = len(spec.visible)
    weights = [0.0] * (visible_count + spec.buckets)
    squares = [0.0] * len(weights)
    bias = 0.0
    bias_square = 0.0
    rows = [
        [
            *((i, (value - spec.visible_mean[i]) / spec.visible_scale[i]) for i, value in enumerate(example.visible)),
            *((visible_count + index, value) for index, value in example.words.items()),
        ]
        for example in examples
    ]
    order = list(range(len(examples)))
    rate, l2 = options.learning_rate, options.l2
    for _ in range(options.epochs):
        rng.shuffle(order)
        for position in order:
            row = rows[position]
            logit = bias + sum(weights[i] * value for i, value in row)
            error = _sigmoid(logit) - examples[position].label
            bias_square += error * error
            bias -= rate * error / (math.sqrt(bias_square) + _EPSILON)
            for i, value in row:
                gradient = error * value + l2 * weights[i]
                squares[i] += gradient * gradient
                weights[i] -= rate * gradient / (math.sqrt(squares[i]) + _EPSILON)
    return bias, weights[:visible_count], weights[visible_count:]


def _sigmoid(logit: float) -> float:
    if logit >= 0:
        return 1 / (1 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1 + exp)
