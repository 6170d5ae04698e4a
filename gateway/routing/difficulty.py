"""The simulator's hidden difficulty: whether each tier answers a prompt right, and how sure its logprobs sound.

A probit Rasch model (one-parameter item response theory), fixed and documented in docs/routing.md:

1. A prompt's difficulty for the small tier `b` is half visible, half hidden: `b = sqrt(.5) * v + sqrt(.5) * h`,
   where `v` is a weighted sum of `features.visible_features` standardised over `prompts.generate`'s distribution
   and `h` is a standard normal drawn from a hash of the prompt text (no feature can see it). The large tier's
   difficulty is its own standard normal, drawn from another hash: what trips the small model says nothing
   about where the large one slips. Sharing it would put the issue's cascade target out of any router's reach;
   docs/routing.md ("Why the large tier's difficulty is its own") says why this reading, and what it costs.
2. Each tier `t` answers right when its margin `θ_t - b_t + ε_t` is positive; `ε_t` is a standard normal per
   (prompt, tier). The abilities `θ_t` are solved so the small tier is right on 60% and the large on 90% of
   generated prompts.
3. The tier's certainty is its own margin read with noise, `margin + σ_r * r_t`; its answer's tokens have
   probability `sigmoid(certainty + 1)` each, jittered per token. `σ_r` is solved so that the small tier's
   confidence (`confidence.confidence` on the wire logprobs) separates right from wrong with AUROC 0.85.

Everything is a pure function of the prompt text and the tier: the same prompt is always judged the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from statistics import NormalDist
from typing import Final, Literal, TypeAlias

import msgspec

from gateway.routing.features import visible_features

Tier: TypeAlias = Literal["small", "large"]

SMALL_ACCURACY: Final = 0.60
"""Share of generated prompts the small tier answers right (the issue's fixed default)."""
LARGE_ACCURACY: Final = 0.90
"""Share of generated prompts the large tier answers right."""
SMALL_PRICE_RATIO: Final = 1 / 20
"""Small tier's price per token as a share of the large tier's (`sluice.example.toml` prices agree)."""
TARGET_AUROC: Final = 0.85
"""AUROC of the small tier's confidence for its right vs wrong answers that `READOUT_NOISE` was solved for."""

VISIBLE_SHARE: Final = 0.5
"""Share of the difficulty's variance the prompt shows (the rest is hidden)."""
VISIBLE_WEIGHTS: Final = (0.6, 0.8, 0.8, 0.4)
"""Weights of (`length`, `code`, `math`, `steps`) in the raw visible difficulty."""
VISIBLE_MEAN: Final = 3.659
VISIBLE_STD: Final = 0.976
"""Mean and standard deviation of the raw visible difficulty over generated prompts (derived, see docs)."""
ABILITIES: Final[Mapping[Tier, float]] = {"small": 0.350, "large": 1.828}
"""`θ` per tier, solved by `derive_abilities` over 50,000 generated prompts for 60% and 90% right."""
READOUT_NOISE: Final = 1.27
"""`σ_r`: how noisily a tier's logprobs reflect its margin; solved for AUROC 0.85 of the small tier's confidence."""
PROBABILITY_OFFSET: Final = 1.0
"""Token probability is `sigmoid(certainty + PROBABILITY_OFFSET)`, clamped to [0.001, 0.999]."""

_NORMAL: Final = NormalDist()
_TWO_64: Final = float(2**64)


class Judgement(msgspec.Struct, frozen=True):
    """How one tier fares on one prompt."""

    difficulty: float
    """`b_t`, the prompt's difficulty for this tier."""
    right: bool
    certainty: float
    """The tier's noisy view of its own margin; the logprobs are a monotone function of it."""
    token_probability: float
    """Probability of each answer token before per-token jitter."""


def visible_difficulty(text: str) -> float:
    """The visible part `v` of the difficulty, standardised over generated prompts."""
    values = visible_features(text).values()
    raw = sum(weight * value for weight, value in zip(VISIBLE_WEIGHTS, values, strict=True))
    return (raw - VISIBLE_MEAN) / VISIBLE_STD


def difficulty(text: str, tier: Tier) -> float:
    """`b_t`: about standard normal over generated prompts; higher is harder."""
    if tier == "large":
        return _normal(text, "hidden/large")
    return math.sqrt(VISIBLE_SHARE) * visible_difficulty(text) + math.sqrt(1 - VISIBLE_SHARE) * _normal(text, "hidden")


def judge(text: str, tier: Tier) -> Judgement:
    b = difficulty(text, tier)
    margin = ABILITIES[tier] - b + _normal(text, f"slip/{tier}")
    certainty = margin + READOUT_NOISE * _normal(text, f"readout/{tier}")
    probability = min(0.999, max(0.001, 1 / (1 + math.exp(-(certainty + PROBABILITY_OFFSET)))))
    return Judgement(difficulty=b, right=margin > 0, certainty=certainty, token_probability=probability)


def derive_abilities(texts: Iterable[str]) -> dict[Tier, float]:
    """`θ` per tier such that the expected share right over `texts` is the tier's accuracy (exact, by bisection).

    Given `b`, a tier is right with probability `Φ(θ - b)`, so no slip needs to be drawn.
    """
    prompts = list(texts)
    targets: dict[Tier, float] = {"small": SMALL_ACCURACY, "large": LARGE_ACCURACY}
    abilities: dict[Tier, float] = {}
    for tier, target in targets.items():
        difficulties = [difficulty(text, tier) for text in prompts]
        low, high = -10.0, 10.0
        for _ in range(60):
            middle = (low + high) / 2
            share = sum(_NORMAL.cdf(middle - b) for b in difficulties) / len(difficulties)
            low, high = (middle, high) if share < target else (low, middle)
        abilities[tier] = (low + high) / 2
    return abilities


def _normal(text: str, salt: str) -> float:
    """A standard normal draw determined by (`salt`, `text`): blake2b → uniform in (0, 1) → inverse CDF."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return _NORMAL.inv_cdf((int.from_bytes(digest, "little") + 0.5) / _TWO_64)
