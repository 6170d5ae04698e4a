"""The pre-call scorer: from the prompt alone, the probability that the small model will answer it right.

Serving is a sparse dot product in plain Python (hashed words + four visible features, then a sigmoid); the
trained model is a versioned msgspec JSON artifact whose content hash is checked on load, so a scorer that was
edited, truncated or written by an unknown format version is refused instead of routing with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal

import msgspec

from gateway.routing.combine import CascadeCombiner, sigmoid
from gateway.routing.errors import ScorerArtifactError
from gateway.routing.features import VISIBLE_FEATURES, hashed_words, prompt_text, visible_features
from gateway.schema.openai import Message

FORMAT: Final = "sluice.router.scorer"
VERSION: Final = 1
"""Artifact format version this code writes and reads; another version is refused on load."""


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class FeatureSpec(_Strict, frozen=True, kw_only=True):
    """How a prompt becomes features; serving must featurise exactly as training did."""

    words: Literal["crc32-unigrams-bigrams"] = "crc32-unigrams-bigrams"
    """`features.hashed_words`: lower-cased unigrams and bigrams, CRC-32 mod `buckets`, scaled to unit norm."""
    buckets: int
    visible: list[str]
    """Names of the visible features (`features.VISIBLE_FEATURES`), in weight order."""
    visible_mean: list[float]
    visible_scale: list[float]
    """Visible features are standardised with these training-set means and standard deviations."""


class TrainingMetrics(_Strict, frozen=True, kw_only=True, omit_defaults=True):
    examples: int
    """Prompts the weights were fitted on."""
    validation_examples: int
    small_correct_share: float
    """Share of training prompts the small model answered right."""
    train_auroc: float
    validation_auroc: float | None
    validation_log_loss: float | None
    epochs: int
    l2: float
    confidence_auroc: float | None = None
    """AUROC of the small answer's confidence alone on the prompts the cascade combiner was fitted on."""
    cascade_auroc: float | None = None
    """AUROC of the combined confidence and prior on those prompts (in-sample for its three weights)."""


class ScorerArtifact(_Strict, frozen=True, kw_only=True, omit_defaults=True):
    """Fields that default to null are left out of the file, so an artifact without a cascade combiner is one the
    Sluice before combiners reads too (a rollback keeps working); one with a combiner needs this version."""

    format: Literal["sluice.router.scorer"]
    version: int
    created_at: str
    """ISO 8601 UTC time of training."""
    content_hash: str
    """blake2b-256 of the canonical JSON of `label`, `spec`, `bias`, `visible_weights`, `word_weights`, then
    of `cascade` when there is one."""
    label: Literal["small_correct"]
    """What the scorer predicts: the probability that the small model answers right."""
    spec: FeatureSpec
    bias: float
    visible_weights: list[float]
    word_weights: list[float]
    """One weight per hash bucket."""
    metrics: TrainingMetrics
    cascade: CascadeCombiner | None = None
    """Weights that combine a cascade's small-answer confidence with this scorer's prior (`combine.py`);
    trained only from data that carries the small model's confidence."""


class _Content(msgspec.Struct, array_like=True):
    label: str
    spec: FeatureSpec
    bias: float
    visible_weights: list[float]
    word_weights: list[float]


class _FormatView(msgspec.Struct):
    """Read first, so another format version is refused with its own message rather than a field error."""

    format: str = "?"
    version: int = 0


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(ScorerArtifact)
_format_decoder: Final = msgspec.json.Decoder(_FormatView)


def content_hash(
    spec: FeatureSpec,
    bias: float,
    visible_weights: list[float],
    word_weights: list[float],
    label: str,
    cascade: CascadeCombiner | None = None,
) -> str:
    """A scorer without a combiner hashes as it always did, so artifacts trained before combiners still load."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(_encoder.encode(_Content(label, spec, bias, visible_weights, word_weights)))
    if cascade is not None:
        digest.update(_encoder.encode(cascade))
    return digest.hexdigest()


def build_artifact(
    spec: FeatureSpec,
    bias: float,
    visible_weights: list[float],
    word_weights: list[float],
    metrics: TrainingMetrics,
    cascade: CascadeCombiner | None = None,
) -> ScorerArtifact:
    """A new artifact stamped with the current format version, the time and its content hash."""
    return ScorerArtifact(
        format=FORMAT,
        version=VERSION,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        content_hash=content_hash(spec, bias, visible_weights, word_weights, "small_correct", cascade),
        label="small_correct",
        spec=spec,
        bias=bias,
        visible_weights=visible_weights,
        word_weights=word_weights,
        metrics=metrics,
        cascade=cascade,
    )


def save(artifact: ScorerArtifact, path: Path) -> None:
    path.write_bytes(msgspec.json.format(_encoder.encode(artifact), indent=1))


def load_artifact(path: Path) -> ScorerArtifact:
    """Read and verify an artifact: format, version and content hash must all hold."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScorerArtifactError(f"{path}: cannot read the scorer artifact: {exc.strerror}") from None
    try:
        format_view = _format_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ScorerArtifactError(f"{path}: not a scorer artifact: {exc}") from None
    if format_view.format != FORMAT or format_view.version != VERSION:
        raise ScorerArtifactError(
            f"{path}: format `{format_view.format}` version {format_view.version} is not supported "
            f"(this Sluice reads `{FORMAT}` version {VERSION}); retrain with `sluice router train`"
        )
    try:
        artifact = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ScorerArtifactError(f"{path}: invalid scorer artifact: {exc}") from None
    expected = content_hash(
        artifact.spec, artifact.bias, artifact.visible_weights, artifact.word_weights, artifact.label, artifact.cascade
    )
    if expected != artifact.content_hash:
        raise ScorerArtifactError(
            f"{path}: content hash mismatch (file says {artifact.content_hash[:16]}…, content is {expected[:16]}…): "
            "the weights were changed after training"
        )
    if len(artifact.word_weights) != artifact.spec.buckets or len(artifact.visible_weights) != len(VISIBLE_FEATURES):
        raise ScorerArtifactError(f"{path}: weight counts do not match the feature spec")
    if artifact.spec.visible != list(VISIBLE_FEATURES):
        raise ScorerArtifactError(f"{path}: visible features {artifact.spec.visible} are not {list(VISIBLE_FEATURES)}")
    return artifact


class Scorer:
    """A loaded artifact, ready to score prompts: `predict(text)` in (0, 1), higher when the small model will do."""

    def __init__(self, artifact: ScorerArtifact) -> None:
        self.artifact = artifact
        self._buckets = artifact.spec.buckets
        self._bias = artifact.bias
        self._words = artifact.word_weights
        # Standardisation folded into the weights: w * (x - m) / s = (w / s) * x - w * m / s.
        self._visible = [
            weight / scale for weight, scale in zip(artifact.visible_weights, artifact.spec.visible_scale, strict=True)
        ]
        self._offset = artifact.bias - sum(
            weight * mean / scale
            for weight, mean, scale in zip(
                artifact.visible_weights, artifact.spec.visible_mean, artifact.spec.visible_scale, strict=True
            )
        )

    @classmethod
    def load(cls, path: Path) -> Scorer:
        return cls(load_artifact(path))

    @property
    def version(self) -> str:
        """Short model id for logs and metrics: the first 12 hex digits of the content hash."""
        return self.artifact.content_hash[:12]

    def predict(self, text: str) -> float:
        return self.predict_features(visible_features(text).values(), hashed_words(text, self._buckets))

    def predict_features(self, visible: Sequence[float], words: Mapping[int, float]) -> float:
        """`predict` on features already extracted (with this artifact's `buckets`)."""
        logit = self._offset
        for weight, value in zip(self._visible, visible, strict=True):
            logit += weight * value
        weights = self._words
        for index, value in words.items():
            logit += weights[index] * value
        return sigmoid(logit)

    def predict_messages(self, messages: Sequence[Message]) -> float:
        """`predict` on a chat request's messages (`features.prompt_text`), as the `scored` route calls it."""
        return self.predict(prompt_text(messages))

    def with_prior(self, confidence: float, text: str) -> float:
        """A cascade's decision score: the small answer's `confidence` combined with this prompt's prediction.

        Only for an artifact trained with a combiner (`artifact.cascade`); `route.py` checks that at start-up."""
        combiner = self.artifact.cascade
        if combiner is None:
            raise ScorerArtifactError(f"scorer {self.version} has no cascade combiner")
        return combiner.combine(confidence, self.predict(text))
