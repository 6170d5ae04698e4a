"""Confidence routing on the simulator: cascade and scored routing against always-small, always-large and random.

Offline and in one process, through the functions the gateway calls: every prompt is answered by the simulator's
small and large tiers (`Simulator.complete`, the wire bytes), graded against its reference answer, and the small
answer's confidence is computed from its logprobs (`confidence.confidence`). The prompts are split by hash into a
training half and a held-out half; the scorer (and its cascade combiner) is trained and every threshold calibrated
on the training half, and every figure below is measured on the held-out half. Two cascades are measured: on the
answer's confidence alone, and combined with the scorer's prior for the prompt (a cascade route with `scorer`).
Quality and cost are ratios against always-large on the same prompts; a cascade pays for the small call on every
prompt and the large call on each escalation.

    .venv/bin/python bench/routing.py                        # 20,000 prompts, about 2 min
    .venv/bin/python bench/routing.py --prompts 4000 --seed 3

Missed targets do not fail the run (figures are not assertions); the exit status is 1 only if a consistency
check fails (the wire answers disagree with the difficulty model, or a curve does not end at always-large).
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, TypeAlias

from benchkit import log, median, percentile, table

from gateway.routing.calibrate import Target, calibrate, outcomes
from gateway.routing.confidence import confidence
from gateway.routing.dataset import LabelledPrompt, chat_request, simulated, split
from gateway.routing.difficulty import LARGE_ACCURACY, SMALL_ACCURACY, SMALL_PRICE_RATIO, TARGET_AUROC, judge
from gateway.routing.evaluation import CurvePoint, Outcome, Route, apgr, auroc, cpt, curve
from gateway.routing.scorer import Scorer
from gateway.routing.train import train

Policy: TypeAlias = Literal["cascade", "cascade+prior", "scored"]
POLICIES: tuple[Policy, ...] = ("cascade", "cascade+prior", "scored")
ROUTE_OF: dict[Policy, Route] = {"cascade": "cascade", "cascade+prior": "cascade", "scored": "scored"}
SHARE_TARGETS = (0.2, 0.45, 0.7)
BOOTSTRAPS = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prompts", type=int, default=20_000, help="simulated prompts (≥ 2,000; default 20,000)")
    parser.add_argument("--seed", type=int, default=0, help="prompt generator seed")
    parser.add_argument("--held-out", type=float, default=0.5, help="share of prompts held out (by prompt hash)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds over the held-out prompts")
    parser.add_argument("--target-cost", type=float, default=0.5, help="calibrated cost, share of always-large's")
    args = parser.parse_args()
    if args.prompts < 2000:
        parser.error("--prompts must be at least 2,000")

    log(f"simulating {args.prompts:,} prompts on both tiers …")
    started = time.perf_counter()
    records = simulated(args.prompts, args.seed)
    simulate_s = time.perf_counter() - started
    training, held_out = split(records, args.held_out)
    log(f"training the scorer on {len(training):,} prompts …")
    started = time.perf_counter()
    scorer = Scorer(train(training))
    train_s = time.perf_counter() - started

    checks: list[tuple[str, bool]] = []
    disagreements = sum(
        r.small_correct != judge(r.prompt, "small").right or r.large_correct != judge(r.prompt, "large").right
        for r in records
    )
    checks.append(
        (f"graded wire answers agree with the difficulty model ({disagreements} disagree)", not disagreements)
    )

    evaluation = {policy: _outcomes(policy, held_out, scorer) for policy in POLICIES}
    calibration = {policy: _outcomes(policy, training, scorer) for policy in POLICIES}
    curves = {policy: curve(ROUTE_OF[policy], evaluation[policy], SMALL_PRICE_RATIO) for policy in POLICIES}
    small_quality = _share(r.small_correct for r in held_out)
    large_quality = _share(bool(r.large_correct) for r in held_out)
    for route, points in curves.items():
        ends = (points[0].quality, points[-1].quality) == (small_quality, large_quality)
        checks.append((f"{route} curve runs from always-small to always-large", ends))

    log(f"bootstrapping APGR ({BOOTSTRAPS} resamples per policy) …")
    spreads = {policy: _bootstrap_apgr(ROUTE_OF[policy], evaluation[policy]) for policy in POLICIES}
    print(_header(args, records, training, held_out, simulate_s, train_s))
    print()
    print(_policy_table(args, curves, calibration, evaluation, spreads, small_quality, large_quality))
    print()
    print(_curve_table(curves))
    print()
    print(_calibration_table(calibration, evaluation))
    print()
    latency = _latency(scorer, held_out, args.rounds)
    print(_signals(records, held_out, evaluation, latency))
    print()
    for policy in ("cascade", "cascade+prior"):
        print(_cascade_anatomy(policy, calibration[policy], evaluation[policy], args.target_cost))
    print()
    print(_targets(args, curves, calibration, evaluation, spreads, records, latency))
    failed = [name for name, ok in checks if not ok]
    print()
    print("checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


def _outcomes(policy: Policy, records: Sequence[LabelledPrompt], scorer: Scorer) -> list[Outcome]:
    """`calibrate.outcomes` as each policy scores: the plain cascade without the scorer's prior."""
    return outcomes(ROUTE_OF[policy], records, None if policy == "cascade" else scorer)


def _header(
    args: argparse.Namespace,
    records: Sequence[LabelledPrompt],
    training: Sequence[LabelledPrompt],
    held_out: Sequence[LabelledPrompt],
    simulate_s: float,
    train_s: float,
) -> str:
    small = _share(r.small_correct for r in records)
    large = _share(bool(r.large_correct) for r in records)
    return "\n".join(
        [
            f"Confidence routing on the simulator: {len(records):,} prompts (seed {args.seed}), "
            f"{len(training):,} to train and calibrate, {len(held_out):,} held out",
            f"simulator defaults: small right on {SMALL_ACCURACY:.0%} (measured {small:.1%}), large on "
            f"{LARGE_ACCURACY:.0%} (measured {large:.1%}), small priced at {SMALL_PRICE_RATIO:.3g} of large per token",
            f"simulating took {simulate_s:.1f} s, training the scorer {train_s:.1f} s",
        ]
    )


def _policy_table(
    args: argparse.Namespace,
    curves: dict[Policy, list[CurvePoint]],
    calibration: dict[Policy, list[Outcome]],
    evaluation: dict[Policy, list[Outcome]],
    spreads: dict[Policy, float],
    small_quality: float,
    large_quality: float,
) -> str:
    """One row per policy: RouteLLM's figures, and the operating point calibrated for the target cost."""
    rows: list[list[str]] = []
    ratio = small_quality / large_quality
    rows.append(["always-small", "-", "-", "-", "0.0%", f"{SMALL_PRICE_RATIO:.3f}", f"{ratio:.3f}"])
    rows.append(["always-large", "-", "-", "-", "100.0%", "1.000", "1.000"])
    # Random routing sends a share c of prompts to the large model at random: q(c) = q_s + c (q_l - q_s) expected.
    random_share = (args.target_cost - SMALL_PRICE_RATIO) / (1 - SMALL_PRICE_RATIO)
    random_quality = (small_quality + random_share * (large_quality - small_quality)) / large_quality
    rows.append(
        ["random", "0.500", "50.0%", "80.0%", f"{random_share:.1%}", f"{args.target_cost:.3f}", f"{random_quality:.3f}"]
    )
    for policy in POLICIES:
        points = curves[policy]
        at = _at_target_cost(policy, calibration, evaluation, args.target_cost, large_quality)
        rows.append(
            [
                policy,
                f"{apgr(points):.3f} ± {spreads[policy]:.3f}",
                f"{cpt(points, 0.5):.1%}",
                f"{cpt(points, 0.8):.1%}",
                f"{at.large_share:.1%}",
                f"{at.cost:.3f}",
                f"{at.quality_ratio:.3f}",
            ]
        )
    headers = ["policy", "APGR", "CPT(50%)", "CPT(80%)", "large calls", "cost/large", "quality/large"]
    title = (
        f"Held-out figures. APGR ± bootstrap standard error ({BOOTSTRAPS} resamples); the last three columns at the "
        f"threshold calibrated on the training half for {args.target_cost:.0%} of always-large's cost "
        "(random: expected values)."
    )
    return title + "\n" + table(headers, rows)


def _at_target_cost(
    policy: Policy,
    calibration: dict[Policy, list[Outcome]],
    evaluation: dict[Policy, list[Outcome]],
    target_cost: float,
    large_quality: float,
) -> CurvePoint:
    """The held-out operating point of the threshold calibrated for `target_cost`."""
    route = ROUTE_OF[policy]
    threshold = calibrate(route, calibration[policy], Target("cost", target_cost)).threshold
    return _at(route, evaluation[policy], threshold, large_quality)


def _curve_table(curves: dict[Policy, list[CurvePoint]]) -> str:
    rows: list[list[str]] = []
    large_quality = curves["cascade"][-1].quality
    small_quality = curves["cascade"][0].quality
    for step in range(11):
        share = step / 10
        row = [f"{share:.0%}"]
        for policy in POLICIES:
            point = _nearest(curves[policy], share)
            row += [f"{point.cost:.3f}", f"{point.quality_ratio:.3f}"]
        row.append(f"{(small_quality + share * (large_quality - small_quality)) / large_quality:.3f}")
        rows.append(row)
    headers = ["large calls", *(f"{policy} {kind}" for policy in POLICIES for kind in ("cost", "quality"))]
    headers.append("random quality")
    return "Cost-vs-quality curve on the held-out half (cost and quality as ratios to always-large):\n" + table(
        headers, rows
    )


def _share_calibrations(
    calibration: dict[Policy, list[Outcome]], evaluation: dict[Policy, list[Outcome]]
) -> list[tuple[Policy, float, float, float, float]]:
    """(policy, target share, threshold, share on the training half, share held out) per target."""
    results: list[tuple[Policy, float, float, float, float]] = []
    for policy in POLICIES:
        for target in SHARE_TARGETS:
            result = calibrate(ROUTE_OF[policy], calibration[policy], Target("large_share", target))
            held = _share(o.score < result.threshold for o in evaluation[policy])
            results.append((policy, target, result.threshold, result.point.large_share, held))
    return results


def _calibration_table(calibration: dict[Policy, list[Outcome]], evaluation: dict[Policy, list[Outcome]]) -> str:
    rows = [
        [policy, f"{target:.0%}", f"{threshold:.4f}", f"{trained:.1%}", f"{held:.1%}", f"{(held - target) * 100:+.1f}"]
        for policy, target, threshold, trained, held in _share_calibrations(calibration, evaluation)
    ]
    headers = ["policy", "target share", "threshold", "on training", "on held-out", "error (points)"]
    return "Calibration for a target large-model share (threshold from the training half):\n" + table(headers, rows)


def _latency(scorer: Scorer, held_out: Sequence[LabelledPrompt], rounds: int) -> dict[str, tuple[float, float]]:
    """Median over rounds of each round's p50 and p99, in microseconds, for the scorer and the confidence."""
    prompts = [record.prompt for record in held_out]
    bodies = _small_bodies(prompts)
    result: dict[str, tuple[float, float]] = {}
    calls_by_name: dict[str, list[Callable[[], object]]] = {
        "scorer.predict": [functools.partial(scorer.predict, prompt) for prompt in prompts],
        "confidence(body)": [functools.partial(confidence, body) for body in bodies],
        "scorer.with_prior": [
            functools.partial(scorer.with_prior, record.small_confidence or 0.0, record.prompt) for record in held_out
        ],
    }
    for name, calls in calls_by_name.items():
        p50s: list[float] = []
        p99s: list[float] = []
        for _ in range(rounds):
            samples: list[float] = []
            for call in calls:
                started = time.perf_counter_ns()
                call()
                samples.append((time.perf_counter_ns() - started) / 1000)
            samples.sort()
            p50s.append(percentile(samples, 50))
            p99s.append(percentile(samples, 99))
        result[name] = (median(p50s), median(p99s))
    return result


def _small_bodies(prompts: Sequence[str]) -> list[bytes]:
    import asyncio

    from gateway.providers.base import UpstreamCall
    from gateway.routing.dataset import simulator

    small = simulator("small")

    async def answer_all() -> list[bytes]:
        return [
            await small.complete(UpstreamCall(request=chat_request(prompt), payload={}, request_id=str(index)))
            for index, prompt in enumerate(prompts)
        ]

    return asyncio.run(answer_all())


def _signals(
    records: Sequence[LabelledPrompt],
    held_out: Sequence[LabelledPrompt],
    evaluation: dict[Policy, list[Outcome]],
    latency: dict[str, tuple[float, float]],
) -> str:
    every = auroc([r.small_confidence or 0.0 for r in records], [r.small_correct for r in records])

    def held(policy: Policy) -> str:
        return f"{auroc([o.score for o in evaluation[policy]], [o.small_correct for o in evaluation[policy]]):.3f}"

    rows = [
        ["small confidence (wire logprobs)", f"{every:.3f}", held("cascade"), *_micros(latency["confidence(body)"])],
        ["scorer prediction (prompt only)", "-", held("scored"), *_micros(latency["scorer.predict"])],
        ["confidence with the scorer's prior", "-", held("cascade+prior"), *_micros(latency["scorer.with_prior"])],
    ]
    headers = ["signal", "AUROC all", "AUROC held-out", "p50 µs", "p99 µs"]
    return (
        f"Signals: AUROC for the small model's right vs wrong answers; latency per call over {len(held_out):,} "
        "held-out prompts (median of rounds)\n" + table(headers, rows)
    )


def _cascade_anatomy(policy: Policy, training: list[Outcome], held: list[Outcome], target_cost: float) -> str:
    """Why a cascade lands where it does: what it keeps on the small model at the calibrated threshold."""
    threshold = calibrate("cascade", training, Target("cost", target_cost)).threshold
    kept = [o for o in held if o.score >= threshold]
    total = len(held)
    kept_wrong = [o for o in kept if not o.small_correct]
    kept_gain = sum(o.small_correct and not o.large_correct for o in kept) / total
    lost = sum(o.large_correct for o in kept_wrong) / total
    return (
        f"{policy} at {target_cost:.0%} cost: keeps {len(kept) / total:.1%} of prompts on the small model, "
        f"{len(kept_wrong) / total:.1%} of all prompts kept while wrong; the large model would have been right on "
        f"{lost / max(len(kept_wrong) / total, 1e-9):.0%} of those (quality lost: {lost:.1%} of prompts), and kept "
        f"answers right where the large model is wrong win back {kept_gain:.1%}."
    )


def _targets(
    args: argparse.Namespace,
    curves: dict[Policy, list[CurvePoint]],
    calibration: dict[Policy, list[Outcome]],
    evaluation: dict[Policy, list[Outcome]],
    spreads: dict[Policy, float],
    records: Sequence[LabelledPrompt],
    latency: dict[str, tuple[float, float]],
) -> str:
    large_quality = curves["cascade"][-1].quality
    scored_apgr = apgr(curves["scored"])
    spread = spreads["scored"]
    worst_share = max(abs(held - target) for _, target, _, _, held in _share_calibrations(calibration, evaluation))
    every = auroc([r.small_confidence or 0.0 for r in records], [r.small_correct for r in records])
    p99_ms = latency["scorer.predict"][1] / 1000
    lines = []
    for policy in ("cascade", "cascade+prior"):
        at = _at_target_cost(policy, calibration, evaluation, args.target_cost, large_quality)
        lines.append(
            (
                f"{policy} keeps ≥ 95% of always-large quality at {args.target_cost:.0%} of its cost",
                f"{at.quality_ratio:.1%} (cost {at.cost:.3f})",
                at.quality_ratio >= 0.95,
            )
        )
    lines += [
        (
            "scored APGR clearly above random's 0.500 (by > 3 standard errors)",
            f"{scored_apgr:.3f} ± {spread:.3f}",
            scored_apgr - 0.5 > 3 * spread,
        ),
        (
            "large-share calibration within ±3 points on held-out",
            f"worst {worst_share * 100:.1f} points",
            worst_share <= 0.03,
        ),
        (f"small-confidence AUROC {TARGET_AUROC} ± 0.02", f"{every:.3f}", abs(every - TARGET_AUROC) <= 0.02),
        ("scorer p99 latency ≤ 1 ms", f"{p99_ms:.3f} ms", p99_ms <= 1.0),
    ]  # fmt: skip
    rows = [[name, value, "met" if ok else "MISSED"] for name, value, ok in lines]
    return "Issue targets:\n" + table(["target", "measured", ""], rows)


def _at(route: Route, data: list[Outcome], threshold: float, large_quality: float) -> CurvePoint:
    """The operating point a threshold gives on `data` (which it was not calibrated on)."""
    escalated = [o for o in data if o.score < threshold]
    share = len(escalated) / len(data)
    quality = _share(o.large_correct if o.score < threshold else o.small_correct for o in data)
    small_share = 1.0 if route == "cascade" else 1 - share
    return CurvePoint(
        threshold=threshold,
        large_share=share,
        cost=small_share * SMALL_PRICE_RATIO + share,
        quality=quality,
        quality_ratio=quality / large_quality,
    )


def _bootstrap_apgr(route: Route, data: list[Outcome]) -> float:
    """Standard deviation of APGR over bootstrap resamples of the held-out prompts (seeded)."""
    rng = random.Random(0)
    values = []
    for _ in range(BOOTSTRAPS):
        sample = rng.choices(data, k=len(data))
        values.append(apgr(curve(route, sample, SMALL_PRICE_RATIO)))
    mean = sum(values) / len(values)
    return float((sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5)


def _nearest(points: Sequence[CurvePoint], share: float) -> CurvePoint:
    return min(points, key=lambda point: abs(point.large_share - share))


def _micros(pair: tuple[float, float]) -> list[str]:
    return [f"{pair[0]:.1f}", f"{pair[1]:.1f}"]


def _share(values: Iterable[bool]) -> float:
    items = list(values)
    return sum(items) / len(items)


if __name__ == "__main__":
    sys.exit(main())
