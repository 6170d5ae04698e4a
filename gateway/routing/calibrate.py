"""`sluice router calibrate`: a route's threshold for a target large-model share, cost or quality.

The threshold is picked on labelled data (`evaluation.curve`, every reachable operating point) and carries over
to new prompts from the same traffic: a large-model share calibrated on one sample lands within sampling error
of it on another. Quality and cost are relative to always-large on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from gateway.routing.dataset import LabelledPrompt
from gateway.routing.difficulty import SMALL_PRICE_RATIO
from gateway.routing.errors import CalibrationError, DatasetError
from gateway.routing.evaluation import CurvePoint, Outcome, Route, curve
from gateway.routing.scorer import Scorer

TargetKind = Literal["large_share", "cost", "quality"]


class Target(msgspec.Struct, frozen=True):
    kind: TargetKind
    """`large_share`: share of prompts sent to the large model; `cost`: share of always-large's cost;
    `quality`: share of always-large's quality (right answers)."""
    value: float


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    route: Route
    target: Target
    threshold: float
    """Escalate (cascade) or pick the large model (scored) when the score is below this."""
    point: CurvePoint
    """What the threshold does on the calibration data."""
    curve: list[CurvePoint]
    examples: int


def outcomes(route: Route, records: Sequence[LabelledPrompt], scorer: Scorer | None = None) -> list[Outcome]:
    """Each record's score for `route` and its labels: for `cascade` the small model's confidence (combined with
    the scorer's prior when a scorer is given, as a cascade route with `scorer` decides), for `scored` the
    scorer's prediction."""
    if route == "cascade" and scorer is not None and scorer.artifact.cascade is None:
        raise DatasetError("this scorer has no cascade combiner; a cascade can only use a scorer trained with one")
    result: list[Outcome] = []
    for number, record in enumerate(records, start=1):
        where = f"record {number}" + (f" (`{record.id}`)" if record.id else "")
        if record.large_correct is None:
            raise DatasetError(f"{where} has no `large_correct`; calibration needs both models' labels")
        if route == "cascade":
            if record.small_confidence is None:
                raise DatasetError(f"{where} has no `small_confidence`; calibrating `cascade` needs it")
            score = record.small_confidence
            if scorer is not None:
                score = scorer.with_prior(score, record.prompt)
        else:
            if scorer is None:
                raise DatasetError("calibrating `scored` needs a scorer artifact")
            score = scorer.predict(record.prompt)
        result.append(Outcome(score=score, small_correct=record.small_correct, large_correct=record.large_correct))
    return result


def calibrate(
    route: Route, data: Sequence[Outcome], target: Target, cost_ratio: float = SMALL_PRICE_RATIO
) -> Calibration:
    """The threshold whose operating point on `data` meets `target` (see `choose`)."""
    points = curve(route, data, cost_ratio)
    point = choose(points, target)
    return Calibration(
        route=route, target=target, threshold=point.threshold, point=point, curve=points, examples=len(data)
    )


def choose(points: Sequence[CurvePoint], target: Target) -> CurvePoint:
    """`large_share`: the nearest share; `cost`: the most large-model calls within the cost; `quality`: the
    fewest large-model calls that reach the quality."""
    value = target.value
    if target.kind == "large_share":
        if not 0 <= value <= 1:
            raise CalibrationError(f"target large-model share {value} is not between 0 and 1")
        return min(points, key=lambda point: (abs(point.large_share - value), point.large_share))
    if target.kind == "cost":
        affordable = [point for point in points if point.cost <= value]
        if not affordable:
            cheapest = min(point.cost for point in points)
            raise CalibrationError(f"target cost {value} is below the cheapest this route can be ({cheapest:.4f})")
        return max(affordable, key=lambda point: (point.cost, -point.large_share))
    good_enough = [point for point in points if point.quality_ratio >= value]
    if not good_enough:
        best = max(point.quality_ratio for point in points)
        raise CalibrationError(f"target quality {value} is above the best this route reaches ({best:.4f})")
    return min(good_enough, key=lambda point: point.large_share)


def summary(points: Sequence[CurvePoint], rows: int = 11) -> list[CurvePoint]:
    """About `rows` points spread evenly over the large-model share, for printing the curve."""
    shares = [index / (rows - 1) for index in range(rows)] if rows > 1 else [0.0]
    chosen: list[CurvePoint] = []
    for share in shares:
        point = min(points, key=lambda candidate: abs(candidate.large_share - share))
        if not chosen or chosen[-1] is not point:
            chosen.append(point)
    return chosen
