"""A cascade's decision from two signals: the small answer's confidence and the scorer's prior for the prompt.

The confidence reads the answer and the scorer reads the prompt; their errors are partly independent, so
together they tell a right small answer from a wrong one better than the confidence alone (docs/routing.md,
"Cascade with a prompt prior"). They are combined by logistic regression on their two logits: three weights,
fitted by Newton's method (exact and deterministic, so written out here rather than pulling in an ML
library for a 3×3 solve). `train.train_examples` fits them on the prompts the scorer did not train on, so
the prior's weight is not inflated by the scorer's in-sample fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import msgspec

from gateway.routing.errors import DatasetError

_CLAMP: Final = 1e-3
"""Signals are read within [0.001, 0.999]: a real upstream's logprob of 0 (confidence 1.0) would otherwise reach
logits far beyond anything the weights were fitted on, where the prior could never overrule the answer."""
_RIDGE: Final = 1e-3
"""A small L2 penalty: keeps Newton's steps finite when one signal separates the labels perfectly."""
_ITERATIONS: Final = 50
MIN_COMBINER_EXAMPLES: Final = 100
"""Held-out prompts with a confidence below which training fits no combiner (three weights need a few)."""


class CascadeCombiner(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`P(small right) = sigmoid(bias + confidence_weight·logit(confidence) + prior_weight·logit(prior))`."""

    bias: float
    confidence_weight: float
    prior_weight: float

    def combine(self, confidence: float, prior: float) -> float:
        return sigmoid(self.bias + self.confidence_weight * logit(confidence) + self.prior_weight * logit(prior))


def fit_combiner(confidences: Sequence[float], priors: Sequence[float], labels: Sequence[bool]) -> CascadeCombiner:
    """Maximum-likelihood weights (with a tiny ridge) for predicting `labels` from the two signals."""
    if not len(confidences) == len(priors) == len(labels):
        raise ValueError("confidences, priors and labels differ in length")
    if len(set(labels)) < 2:
        raise DatasetError("fitting the cascade combiner needs right and wrong small answers")
    rows = [(1.0, logit(c), logit(p)) for c, p in zip(confidences, priors, strict=True)]
    targets = [1.0 if label else 0.0 for label in labels]
    weights = [0.0, 0.0, 0.0]
    converged = False
    for _ in range(_ITERATIONS):
        gradient = [_RIDGE * w for w in weights]
        hessian = [[_RIDGE if i == j else 0.0 for j in range(3)] for i in range(3)]
        for row, target in zip(rows, targets, strict=True):
            p = sigmoid(sum(w * x for w, x in zip(weights, row, strict=True)))
            curvature = p * (1 - p)
            for i in range(3):
                gradient[i] += (p - target) * row[i]
                for j in range(3):
                    hessian[i][j] += curvature * row[i] * row[j]
        step = _solve(hessian, gradient)
        weights = [w - s for w, s in zip(weights, step, strict=True)]
        if max(abs(s) for s in step) < 1e-9:
            converged = True
            break
    if not converged or not all(math.isfinite(w) for w in weights):
        raise DatasetError(f"the cascade combiner did not converge in {_ITERATIONS} Newton steps (weights {weights})")
    return CascadeCombiner(bias=weights[0], confidence_weight=weights[1], prior_weight=weights[2])


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting; the ridge keeps `matrix` positive definite."""
    size = len(vector)
    rows = [[*matrix[i], vector[i]] for i in range(size)]
    for column in range(size):
        pivot = max(range(column, size), key=lambda r: abs(rows[r][column]))
        rows[column], rows[pivot] = rows[pivot], rows[column]
        for r in range(column + 1, size):
            factor = rows[r][column] / rows[column][column]
            for c in range(column, size + 1):
                rows[r][c] -= factor * rows[column][c]
    solution = [0.0] * size
    for r in reversed(range(size)):
        tail = sum(rows[r][c] * solution[c] for c in range(r + 1, size))
        solution[r] = (rows[r][size] - tail) / rows[r][r]
    return solution


def logit(probability: float) -> float:
    """log(p / (1 − p)), with p clamped away from 0 and 1."""
    p = min(1 - _CLAMP, max(_CLAMP, probability))
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    """1 / (1 + e^−x), without overflow for large negative x."""
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    exp = math.exp(x)
    return exp / (1 + exp)
