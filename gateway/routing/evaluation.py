"""How good a router is, in RouteLLM's terms: the quality curve over the share of large-model calls, APGR, CPT(x).

A router orders prompts by a score (the small model's confidence, or the scorer's prediction that it will do)
and sends the lowest-scoring ones to the large model. At each reachable large-model share `c`, quality `q(c)` is
the share of prompts answered right; PGR(c) = (q(c) - q_small) / (q_large - q_small) is the share of the quality
gap recovered. APGR is PGR's area over c in [0, 1] (trapezoids), CPT(x) the least share of large-model calls
with PGR ≥ x. Random routing has PGR(c) = c in expectation: APGR 0.5, CPT(x) = x.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal, TypeAlias

import msgspec

from gateway.routing.errors import CalibrationError

Route: TypeAlias = Literal["cascade", "scored"]
"""`cascade` calls the small model on every prompt and the large one on escalations; `scored` calls one of them."""


class Outcome(msgspec.Struct, frozen=True):
    """One labelled prompt as a router sees it."""

    score: float
    """Higher means the small model is more likely to do; the router escalates when `score < threshold`."""
    small_correct: bool
    large_correct: bool


class CurvePoint(msgspec.Struct, frozen=True):
    threshold: float
    """Escalate (call the large model) when the score is below this."""
    large_share: float
    """Share of prompts that reach the large model."""
    cost: float
    """Cost as a share of always-large's (the small model's calls included)."""
    quality: float
    """Share of prompts answered right."""
    quality_ratio: float
    """`quality` over always-large's quality."""


def curve(route: Route, outcomes: Sequence[Outcome], cost_ratio: float) -> list[CurvePoint]:
    """Every operating point a threshold can reach, from no escalation to all, in order of large-model share.

    `cost_ratio` is a small call's cost over a large call's (the same tokens at 1/20 of the price: 0.05).
    """
    if not outcomes:
        raise CalibrationError("no labelled prompts to build a curve from")
    ordered = sorted(outcomes, key=lambda outcome: outcome.score)
    total = len(ordered)
    large_quality = sum(outcome.large_correct for outcome in ordered) / total
    right = sum(outcome.small_correct for outcome in ordered)
    points: list[CurvePoint] = []
    for escalated in range(total + 1):
        reachable = escalated in (0, total) or ordered[escalated - 1].score < ordered[escalated].score
        if reachable:
            if escalated == 0:
                threshold = ordered[0].score
            elif escalated == total:
                threshold = math.nextafter(ordered[-1].score, math.inf)
            else:
                threshold = (ordered[escalated - 1].score + ordered[escalated].score) / 2
            share = escalated / total
            small_share = 1.0 if route == "cascade" else 1 - share
            quality = right / total
            points.append(
                CurvePoint(
                    threshold=threshold,
                    large_share=share,
                    cost=small_share * cost_ratio + share,
                    quality=quality,
                    quality_ratio=quality / large_quality if large_quality else math.inf,
                )
            )
        if escalated < total:
            outcome = ordered[escalated]
            right += outcome.large_correct - outcome.small_correct
    return points


def pgr(point: CurvePoint, small_quality: float, large_quality: float) -> float:
    gap = large_quality - small_quality
    return (point.quality - small_quality) / gap if gap else 1.0


def apgr(points: Sequence[CurvePoint]) -> float:
    """Area under PGR over the large-model share, by trapezoids between reachable points."""
    small_quality, large_quality = points[0].quality, points[-1].quality
    area = 0.0
    for left, right in itertools.pairwise(points):
        width = right.large_share - left.large_share
        area += width * (pgr(left, small_quality, large_quality) + pgr(right, small_quality, large_quality)) / 2
    return area


def cpt(points: Sequence[CurvePoint], recovered: float) -> float:
    """The least large-model share at which PGR reaches `recovered` (e.g. 0.5 for CPT(50%))."""
    small_quality, large_quality = points[0].quality, points[-1].quality
    for point in points:
        if pgr(point, small_quality, large_quality) >= recovered:
            return point.large_share
    return 1.0


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half): Mann-Whitney U."""
    pairs = sorted(zip(scores, positives, strict=True), key=lambda pair: pair[0])
    positive_count = sum(positives)
    negative_count = len(pairs) - positive_count
    if not positive_count or not negative_count:
        raise CalibrationError("AUROC needs both right and wrong answers")
    rank_sum = 0.0
    start = 0
    while start < len(pairs):
        end = start
        while end < len(pairs) and pairs[end][0] == pairs[start][0]:
            end += 1
        average_rank = (start + 1 + end) / 2
        rank_sum += average_rank * sum(1 for _, positive in pairs[start:end] if positive)
        start = end
    return (rank_sum - positive_count * (positive_count + 1) / 2) / (positive_count * negative_count)
