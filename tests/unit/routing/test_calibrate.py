"""Calibration picks thresholds that hold on prompts it never saw; the curve and RouteLLM's figures are exact."""

from __future__ import annotations

import random

import pytest

from gateway.routing.calibrate import Target, calibrate, choose, outcomes, summary
from gateway.routing.dataset import LabelledPrompt
from gateway.routing.errors import CalibrationError, DatasetError
from gateway.routing.evaluation import Outcome, Route, apgr, auroc, cpt, curve
from gateway.routing.scorer import Scorer

Halves = tuple[list[LabelledPrompt], list[LabelledPrompt]]


def large_share_on(data: list[Outcome], threshold: float) -> float:
    return sum(outcome.score < threshold for outcome in data) / len(data)


@pytest.mark.parametrize("target", [0.2, 0.45, 0.7])
@pytest.mark.parametrize("policy", ["cascade", "cascade with prior", "scored"])
def test_threshold_for_a_target_large_share_lands_within_3_points_on_held_out_prompts(
    halves: Halves, scorer: Scorer, policy: str, target: float
) -> None:
    """Calibrated on one half of the prompts (the scorer's training half), measured on the other."""
    training, held_out = halves
    route: Route = "scored" if policy == "scored" else "cascade"
    used = None if policy == "cascade" else scorer
    result = calibrate(route, outcomes(route, training, used), Target("large_share", target))
    assert abs(result.point.large_share - target) < 0.005
    assert abs(large_share_on(outcomes(route, held_out, used), result.threshold) - target) <= 0.03


def test_threshold_for_a_target_cost_stays_within_it_counting_the_small_call_on_every_prompt(halves: Halves) -> None:
    training, _ = halves
    result = calibrate("cascade", outcomes("cascade", training), Target("cost", 0.5), cost_ratio=0.05)
    assert result.point.cost <= 0.5
    assert result.point.large_share == pytest.approx(0.45, abs=0.002)


def test_threshold_for_a_target_quality_is_the_cheapest_that_reaches_it(halves: Halves) -> None:
    training, _ = halves
    result = calibrate("cascade", outcomes("cascade", training), Target("quality", 0.9))
    assert result.point.quality_ratio >= 0.9
    cheaper = [p for p in result.curve if p.large_share < result.point.large_share]
    assert all(p.quality_ratio < 0.9 for p in cheaper)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Target("cost", 0.01), "below the cheapest"),
        (Target("quality", 1.5), "above the best"),
        (Target("large_share", 1.2), "not between 0 and 1"),
    ],
    ids=["cost", "quality", "share"],
)
def test_unreachable_targets_are_refused_naming_the_number(target: Target, message: str) -> None:
    points = curve("cascade", [Outcome(0.5, True, True), Outcome(0.1, False, True)], 0.05)
    with pytest.raises(CalibrationError, match=message):
        choose(points, target)


def test_cascade_calibration_needs_confidences_and_both_labels() -> None:
    with pytest.raises(DatasetError, match=r"record 1 .*`small_confidence`"):
        outcomes("cascade", [LabelledPrompt(id="q1", prompt="x", small_correct=True, large_correct=True)])
    with pytest.raises(DatasetError, match="`large_correct`"):
        outcomes("cascade", [LabelledPrompt(prompt="x", small_correct=True, small_confidence=0.5)])


def test_curve_runs_from_always_small_to_always_large_with_costs_per_route() -> None:
    data = [Outcome(0.9, True, True), Outcome(0.2, False, True), Outcome(0.5, True, False), Outcome(0.1, False, False)]
    cascade = curve("cascade", data, 0.05)
    scored = curve("scored", data, 0.05)
    assert [p.large_share for p in cascade] == [0, 0.25, 0.5, 0.75, 1]
    assert [p.quality for p in cascade] == [0.5, 0.5, 0.75, 0.5, 0.5]
    assert [p.cost for p in cascade] == pytest.approx([0.05, 0.3, 0.55, 0.8, 1.05])
    assert [p.cost for p in scored] == pytest.approx([0.05, 0.2875, 0.525, 0.7625, 1.0])
    assert all(p.large_share == sum(o.score < p.threshold for o in data) / 4 for p in cascade)


def test_tied_scores_give_only_reachable_points() -> None:
    data = [Outcome(0.5, True, True), Outcome(0.5, False, True), Outcome(0.9, True, True)]
    assert [p.large_share for p in curve("scored", data, 0.05)] == pytest.approx([0, 2 / 3, 1])


def test_an_oracle_router_recovers_the_whole_gap_at_once_and_random_routing_half() -> None:
    rng = random.Random(0)
    labels = [(rng.random() < 0.6, rng.random() < 0.9) for _ in range(4000)]
    # The oracle escalates exactly the prompts the large model gets right and the small one does not.
    oracle = [Outcome(0.0 if large and not small else 1.0, small, large) for small, large in labels]
    points = curve("scored", oracle, 0.05)
    gap_share = sum(1 for small, large in labels if large and not small) / len(labels)
    assert cpt(points, 1.0) == pytest.approx(gap_share)
    assert apgr(points) > 0.85
    shuffled = curve("scored", [Outcome(rng.random(), small, large) for small, large in labels], 0.05)
    assert apgr(shuffled) == pytest.approx(0.5, abs=0.05)
    assert cpt(shuffled, 0.5) == pytest.approx(0.5, abs=0.08)


def test_auroc_counts_ties_as_half() -> None:
    assert auroc([0.1, 0.2, 0.3, 0.4], [False, False, True, True]) == 1.0
    assert auroc([0.4, 0.3, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5


def test_summary_spreads_rows_over_the_large_share(halves: Halves) -> None:
    training, _ = halves
    points = curve("cascade", outcomes("cascade", training), 0.05)
    rows = summary(points, 11)
    assert len(rows) == 11
    assert [round(p.large_share, 2) for p in rows] == [i / 10 for i in range(11)]
