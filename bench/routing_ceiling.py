"""How good can any cascade be? The simulator's difficulty model, if the large tier shared the small one's difficulty.

A Monte Carlo of the model in `gateway/routing/difficulty.py` with standard normal visible and hidden parts, and
the one structural choice made a parameter: the large tier's difficulty is `ρ·b + √(1−ρ²)·b'` (`b` the small
tier's, `b'` its own). The simulator is ρ = 0 (docs/routing.md, "Why the large tier's difficulty is its own").
For each ρ, with the issue's fixed defaults (60% / 90% right, small confidence AUROC 0.85, 45% of prompts
escalated, which is half of always-large's cost at a 1/20 price), it prints the share of always-large's
quality kept by

- the cascade on the confidence alone, and
- about the best any cascade can do with the confidence and the prompt's visible difficulty: escalating the
  prompts with the highest expected gain `E[large right − small right | confidence, visible]`, read off 2-D
  bins of the same samples (an estimate of the ceiling, slightly optimistic, not a bound).

    .venv/bin/python bench/routing_ceiling.py            # 200,000 samples, about 10 s
"""

from __future__ import annotations

import argparse
import math
import random
from statistics import NormalDist

from benchkit import table

from gateway.routing.difficulty import ABILITIES, LARGE_ACCURACY, READOUT_NOISE, VISIBLE_SHARE

ESCALATED = 0.45
BINS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [_row(rho, args.samples, args.seed) for rho in (0.0, 0.25, 0.5, 0.75, 1.0)]
    print(
        f"Quality kept (share of always-large's) with {ESCALATED:.0%} of prompts escalated, {args.samples:,} samples; "
        "ρ = how much of the small tier's difficulty the large tier shares (idealised: normal features)\n"
        + table(["ρ", "confidence cascade", "≈ best cascade (confidence + prompt)"], rows)
    )


def _row(rho: float, samples: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # a reproducible simulation, not a secret
    theta_small = ABILITIES["small"]
    # The large tier's ability for 90% right: its difficulty and slip are independent standard normals.
    theta_large = NormalDist().inv_cdf(LARGE_ACCURACY) * math.sqrt(2)
    visible, confidence, small, large = [], [], [], []
    for _ in range(samples):
        v, h, own = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
        b = math.sqrt(VISIBLE_SHARE) * v + math.sqrt(1 - VISIBLE_SHARE) * h
        margin = theta_small - b + rng.gauss(0, 1)
        b_large = rho * b + math.sqrt(1 - rho * rho) * own
        visible.append(v)
        confidence.append(margin + READOUT_NOISE * rng.gauss(0, 1))
        small.append(margin > 0)
        large.append(theta_large - b_large + rng.gauss(0, 1) > 0)
    gains = _binned_gain(confidence, visible, small, large)
    return [
        f"{rho:.2f}",
        f"{_kept(confidence, small, large):.1%}",
        f"{_kept([-gain for gain in gains], small, large):.1%}",
    ]


def _kept(score: list[float], small: list[bool], large: list[bool]) -> float:
    """Quality over always-large's when the `ESCALATED` share with the lowest `score` goes to the large tier."""
    order = sorted(range(len(score)), key=score.__getitem__)
    escalated = set(order[: int(ESCALATED * len(score))])
    right = sum(large[i] if i in escalated else small[i] for i in range(len(score)))
    return right / sum(large)


def _binned_gain(x: list[float], y: list[float], small: list[bool], large: list[bool]) -> list[float]:
    """Each sample's mean `large − small` over its (x, y) quantile bin."""
    bx, by = _quantile_bins(x), _quantile_bins(y)
    totals: dict[tuple[int, int], list[int]] = {}
    for i in range(len(x)):
        cell = totals.setdefault((bx[i], by[i]), [0, 0])
        cell[0] += large[i] - small[i]
        cell[1] += 1
    return [totals[(bx[i], by[i])][0] / totals[(bx[i], by[i])][1] for i in range(len(x))]


def _quantile_bins(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=values.__getitem__)
    bins = [0] * len(values)
    for rank, index in enumerate(order):
        bins[index] = rank * BINS // len(values)
    return bins


if __name__ == "__main__":
    main()
