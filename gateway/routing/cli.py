"""`sluice router train|calibrate` and `sluice simulator dataset`: flags → the offline routing functions → a report.

No logic lives here; `gateway/cli.py` registers the two groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import click

from gateway.routing.errors import RoutingError

if TYPE_CHECKING:
    from gateway.routing.calibrate import TargetKind
    from gateway.routing.dataset import LabelledPrompt
    from gateway.routing.evaluation import CurvePoint
    from gateway.routing.train import Example

# Imported in the commands, not here: `sluice` starts without loading the simulator, tiktoken or the trainer.
SMALL_PRICE_RATIO: Final = 1 / 20
"""Default `--cost-ratio`: `difficulty.SMALL_PRICE_RATIO` (a test checks they agree)."""

_DATA = click.Path(exists=True, dir_okay=False, path_type=Path)
_OUT = click.Path(dir_okay=False, writable=True, path_type=Path)


@click.group("router")
def router() -> None:
    """Offline tools for confidence routing: train the prompt scorer, calibrate route thresholds."""


@router.command("train")
@click.option("--data", "data_paths", multiple=True, type=_DATA, help="Labelled JSONL; repeatable.")
@click.option(
    "--from-feedback",
    "feedback_days",
    type=click.IntRange(1, 3650),
    help="Also learn from the last N days of rated small-model answers in SLUICE_DATABASE_URL.",
)
@click.option("--out", "out_path", required=True, type=_OUT, help="Where to write the scorer artifact (JSON).")
@click.option("--buckets", default=4096, show_default=True, type=click.IntRange(16, 1 << 20), help="Word hash buckets.")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(1, 1000))
@click.option("--l2", default=0.03, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--validation-share", default=0.2, show_default=True, type=click.FloatRange(0, 0.9), help="Held out by prompt hash."
)
@click.option("--seed", default=0, show_default=True, type=int)
def router_train(
    data_paths: Sequence[Path],
    feedback_days: int | None,
    out_path: Path,
    buckets: int,
    epochs: int,
    l2: float,
    validation_share: float,
    seed: int,
) -> None:
    """Fit the scorer on labelled prompts (`prompt`, `small_correct`) and/or rated answers, and write a
    versioned artifact."""
    from gateway.routing.combine import MIN_COMBINER_EXAMPLES
    from gateway.routing.scorer import save
    from gateway.routing.train import TrainingOptions, examples_from_prompts, train_examples

    if not data_paths and feedback_days is None:
        raise click.UsageError("give labelled prompts (--data) or --from-feedback DAYS, or both")
    options = TrainingOptions(buckets=buckets, epochs=epochs, l2=l2, validation_share=validation_share, seed=seed)
    try:
        examples = examples_from_prompts(_read(data_paths), buckets)
        if feedback_days is not None:
            examples += _rated(feedback_days, buckets)
        artifact = train_examples(examples, options)
    except RoutingError as exc:
        raise click.ClickException(str(exc)) from None
    save(artifact, out_path)
    metrics = artifact.metrics
    click.echo(
        f"trained on {metrics.examples:,} prompts (small model right on {metrics.small_correct_share:.1%}), "
        f"train AUROC {metrics.train_auroc:.3f}"
    )
    if metrics.validation_auroc is not None and metrics.validation_log_loss is not None:
        click.echo(
            f"validation: {metrics.validation_examples:,} held-out prompts, AUROC {metrics.validation_auroc:.3f}, "
            f"log loss {metrics.validation_log_loss:.3f}"
        )
    if metrics.cascade_auroc is not None and metrics.confidence_auroc is not None:
        click.echo(
            f"cascade combiner: on the scorer's held-out prompts (which fitted its three weights), AUROC "
            f"{metrics.cascade_auroc:.3f} with the prompt prior vs {metrics.confidence_auroc:.3f} for the small "
            "answer's confidence alone"
        )
    else:
        click.echo(
            "no cascade combiner: it is fitted on the scorer's held-out prompts that carry `small_confidence`, "
            f"and fewer than {MIN_COMBINER_EXAMPLES} of them did"
        )
    click.echo(
        f"wrote {out_path}: {artifact.format} version {artifact.version}, content hash {artifact.content_hash[:12]}, "
        f"created {artifact.created_at}"
    )


@router.command("calibrate")
@click.option("--route", required=True, type=click.Choice(["cascade", "scored"]))
@click.option("--data", "data_paths", multiple=True, required=True, type=_DATA, help="Labelled JSONL; repeatable.")
@click.option(
    "--scorer",
    "scorer_path",
    type=_DATA,
    help="Scorer artifact: needed for --route scored; for --route cascade, the route's prompt prior (if it has one).",
)
@click.option("--target-large-share", type=click.FloatRange(0, 1), help="Share of prompts sent to the large model.")
@click.option("--target-cost", type=click.FloatRange(0, min_open=True), help="Cost as a share of always-large's.")
@click.option("--target-quality", type=click.FloatRange(0, min_open=True), help="Quality as a share of always-large's.")
@click.option(
    "--cost-ratio",
    default=SMALL_PRICE_RATIO,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="A small call's cost over a large call's.",
)
@click.option("--rows", default=11, show_default=True, type=click.IntRange(2, 1000), help="Rows of the printed curve.")
def router_calibrate(
    route: Literal["cascade", "scored"],
    data_paths: Sequence[Path],
    scorer_path: Path | None,
    target_large_share: float | None,
    target_cost: float | None,
    target_quality: float | None,
    cost_ratio: float,
    rows: int,
) -> None:
    """Pick ROUTE's threshold on labelled prompts for one target, and print the cost-vs-quality curve."""
    from gateway.routing import calibrate as calibration
    from gateway.routing.scorer import Scorer

    given: list[tuple[TargetKind, float | None]] = [
        ("large_share", target_large_share),
        ("cost", target_cost),
        ("quality", target_quality),
    ]
    targets = [calibration.Target(kind, value) for kind, value in given if value is not None]
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --target-large-share, --target-cost, --target-quality")
    if route == "scored" and scorer_path is None:
        raise click.UsageError("--route scored needs --scorer")
    try:
        scorer = Scorer.load(scorer_path) if scorer_path is not None else None
        outcomes = calibration.outcomes(route, _read(data_paths), scorer)
        result = calibration.calibrate(route, outcomes, targets[0], cost_ratio)
    except RoutingError as exc:
        raise click.ClickException(str(exc)) from None
    signal = {
        "cascade": "the small answer's confidence" + (" with the scorer's prior" if scorer is not None else ""),
        "scored": "the scorer's prediction",
    }[route]
    click.echo(
        f"{route} on {result.examples:,} labelled prompts: threshold {result.threshold:.6f} "
        f"(large model when {signal} < threshold)"
    )
    point = result.point
    click.echo(
        f"at it: large-model share {point.large_share:.1%}, cost {point.cost:.1%} of always-large, "
        f"quality {point.quality_ratio:.1%} of always-large ({point.quality:.1%} right)"
    )
    click.echo("")
    click.echo(curve_table(calibration.summary(result.curve, rows)))


@click.group("simulator")
def simulator() -> None:
    """The built-in simulator's offline tools."""


@simulator.command("dataset")
@click.option("--count", default=2000, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out_path", required=True, type=_OUT, help="JSONL file to write.")
def simulator_dataset(count: int, seed: int, out_path: Path) -> None:
    """Write COUNT generated prompts labelled by the simulator: reference answer, which tiers got it right,
    and the small tier's confidence."""
    from gateway.routing.dataset import simulated, write_jsonl
    from gateway.routing.evaluation import auroc

    records = simulated(count, seed)
    write_jsonl(out_path, records)
    small = sum(record.small_correct for record in records) / len(records)
    large = sum(bool(record.large_correct) for record in records) / len(records)
    line = f"wrote {len(records):,} labelled prompts to {out_path}: small right on {small:.1%}, large on {large:.1%}"
    if 0 < small < 1:
        confidences = [record.small_confidence or 0.0 for record in records]
        line += f", small-confidence AUROC {auroc(confidences, [r.small_correct for r in records]):.3f}"
    click.echo(line)


def curve_table(points: Sequence[CurvePoint]) -> str:
    headers = ("large share", "cost", "quality", "vs large", "threshold")
    rows = [
        (
            f"{p.large_share:.1%}",
            f"{p.cost:.1%}",
            f"{p.quality:.1%}",
            f"{p.quality_ratio:.1%}",
            f"{p.threshold:.6f}",
        )
        for p in points
    ]
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def _rated(days: int, buckets: int) -> list[Example]:
    """Rated small-model answers of the last `days` days, from the database the gateway writes."""
    import asyncio
    import datetime as dt
    import os

    from gateway.routing.feedback_data import feedback_examples
    from gateway.settings import ConfigError, Settings

    try:
        database_url = Settings.from_env(os.environ).database_url
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if database_url is None:
        raise click.ClickException("--from-feedback reads SLUICE_DATABASE_URL, which is not set")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    rated = asyncio.run(feedback_examples(database_url, since, buckets))
    click.echo(f"{len(rated.examples):,} rated small-model answers from the last {days} days", err=True)
    if rated.skipped:
        click.echo(f"skipped {rated.skipped:,} kept with other than {buckets} hash buckets", err=True)
    return rated.examples


def _read(paths: Sequence[Path]) -> list[LabelledPrompt]:
    from gateway.routing.dataset import read_jsonl

    records: list[LabelledPrompt] = []
    for path in paths:
        records.extend(read_jsonl(path))
    return records
