"""`sluice router train`: fit the pre-call scorer (logistic regression) on labelled prompts, in plain Python.

The input is labelled prompts (`dataset.LabelledPrompt`, from a JSONL file) or featurised `Example`s (usage
records that kept their prompt's features, joined with feedback labels: `feedback_data.py`), or both. A few
thousand prompts train in seconds with AdaGrad SGD, and nothing heavier than the standard library is needed
to train or serve.

When the data carries the small model's confidence (`small_confidence`, as the simulator's datasets do), the
artifact also gets a cascade combiner (`combine.py`), fitted on the validation prompts the scorer never saw.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.routing.combine import MIN_COMBINER_EXAMPLES, CascadeCombiner, fit_combiner, sigmoid
from gateway.routing.dataset import LabelledPrompt, held_out_key
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


class Example(msgspec.Struct, frozen=True):
    """One training example as the scorer sees it: the visible features, the hashed words, and the label.

    `key` decides the train/validation split (the prompt text, or a request id for usage records, which keep
    features but never text)."""

    key: str
    visible: tuple[float, float, float, float]
    words: dict[int, float]
    label: bool
    confidence: float | None = None
    """The small answer's confidence, when the data has it (fits the cascade combiner)."""


def examples_from_prompts(records: Sequence[LabelledPrompt], buckets: int) -> list[Example]:
    return [
        Example(
            key=record.prompt,
            visible=visible_features(record.prompt).values(),
            words=hashed_words(record.prompt, buckets),
            label=record.small_correct,
            confidence=record.small_confidence,
        )
        for record in records
    ]


def train(examples: Sequence[LabelledPrompt], options: TrainingOptions | None = None) -> ScorerArtifact:
    """Fit on labelled prompts (a JSONL file's)."""
    options = options or TrainingOptions()
    return train_examples(examples_from_prompts(examples, options.buckets), options)


def train_examples(examples: Sequence[Example], options: TrainingOptions | None = None) -> ScorerArtifact:
    """Fit on featurised examples, from any source (prompts, usage records with feedback, or both)."""
    options = options or TrainingOptions()
    held = [_held_out(example.key, options.validation_share) for example in examples]
    fit_on = [example for example, out in zip(examples, held, strict=True) if not out]
    validate_on = [example for example, out in zip(examples, held, strict=True) if out]
    if not fit_on:
        raise DatasetError("no labelled prompts to train on")
    if len({example.label for example in fit_on}) < 2:
        raise DatasetError("training needs prompts the small model got right and prompts it got wrong")
    mean = [statistics.fmean(example.visible[i] for example in fit_on) for i in range(len(VISIBLE_FEATURES))]
    scale = [statistics.pstdev(example.visible[i] for example in fit_on) or 1.0 for i in range(len(VISIBLE_FEATURES))]
    spec = FeatureSpec(buckets=options.buckets, visible=list(VISIBLE_FEATURES), visible_mean=mean, visible_scale=scale)
    bias, visible_weights, word_weights = _fit(fit_on, spec, options)
    metrics = TrainingMetrics(
        examples=len(fit_on),
        validation_examples=len(validate_on),
        small_correct_share=sum(example.label for example in fit_on) / len(fit_on),
        train_auroc=0.0,
        validation_auroc=None,
        validation_log_loss=None,
        epochs=options.epochs,
        l2=options.l2,
    )
    scorer = Scorer(build_artifact(spec, bias, visible_weights, word_weights, metrics))
    combiner, confidence_auroc, cascade_auroc = _combiner(scorer, validate_on)
    artifact = build_artifact(spec, bias, visible_weights, word_weights, metrics, combiner)
    # Measured with the serving code path; metrics are outside the content hash, so filling them in keeps it.
    train_auroc = auroc([_predict(scorer, example) for example in fit_on], [example.label for example in fit_on])
    validation_auroc = validation_log_loss = None
    if len({example.label for example in validate_on}) == 2:
        predictions = [_predict(scorer, example) for example in validate_on]
        validation_auroc = auroc(predictions, [example.label for example in validate_on])
        validation_log_loss = statistics.fmean(
            -math.log(max(_EPSILON, p if example.label else 1 - p))
            for p, example in zip(predictions, validate_on, strict=True)
        )
    metrics = msgspec.structs.replace(
        metrics,
        train_auroc=train_auroc,
        validation_auroc=validation_auroc,
        validation_log_loss=validation_log_loss,
        confidence_auroc=confidence_auroc,
        cascade_auroc=cascade_auroc,
    )
    return msgspec.structs.replace(artifact, metrics=metrics)


def _combiner(
    scorer: Scorer, validate_on: Sequence[Example]
) -> tuple[CascadeCombiner | None, float | None, float | None]:
    """(combiner, confidence-alone AUROC, combined AUROC) from the validation prompts that carry a confidence.

    Fitted out of the scorer's sample: in-sample predictions are sharper than served ones and would earn the
    prior more weight than it deserves."""
    rated = [example for example in validate_on if example.confidence is not None]
    labels = [example.label for example in rated]
    if len(rated) < MIN_COMBINER_EXAMPLES or len(set(labels)) < 2:
        return None, None, None
    confidences = [example.confidence for example in rated if example.confidence is not None]
    priors = [_predict(scorer, example) for example in rated]
    combiner = fit_combiner(confidences, priors, labels)
    combined = [combiner.combine(c, p) for c, p in zip(confidences, priors, strict=True)]
    return combiner, auroc(confidences, labels), auroc(combined, labels)


def _predict(scorer: Scorer, example: Example) -> float:
    return scorer.predict_features(example.visible, example.words)


def _held_out(key: str, share: float) -> bool:
    """The split by key hash that `dataset.held_out` makes for prompts (salt `validation`)."""
    return share > 0 and held_out_key(key, share, "validation")


def _fit(
    examples: list[Example], spec: FeatureSpec, options: TrainingOptions
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
            error = sigmoid(logit) - (1.0 if examples[position].label else 0.0)
            bias_square += error * error
            bias -= rate * error / (math.sqrt(bias_square) + _EPSILON)
            for i, value in row:
                gradient = error * value + l2 * weights[i]
                squares[i] += gradient * gradient
                weights[i] -= rate * gradient / (math.sqrt(squares[i]) + _EPSILON)
    return bias, weights[:visible_count], weights[visible_count:]
