"""`sluice simulator dataset`, `sluice router train` and `sluice router calibrate` on small data, end to end."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.routing import cli as routing_cli
from gateway.routing.calibrate import Target, calibrate, outcomes
from gateway.routing.dataset import LabelledPrompt, read_jsonl, write_jsonl
from gateway.routing.difficulty import SMALL_PRICE_RATIO
from gateway.routing.scorer import Scorer


def sluice(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(name="data", scope="module")
def fx_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("routing") / "data.jsonl"
    result = sluice("simulator", "dataset", "--count", "400", "--seed", "2", "--out", path)
    assert result.exit_code == 0, result.output
    return path


def test_sluice_lists_the_router_and_simulator_groups() -> None:
    output = sluice("--help").output
    assert "router" in output
    assert "simulator" in output


def test_simulator_dataset_writes_labelled_jsonl_and_reports_it(data: Path, tmp_path: Path) -> None:
    records = read_jsonl(data)
    assert len(records) == 400
    assert all(r.reference and r.small_confidence is not None and r.large_correct is not None for r in records)
    assert len({r.id for r in records}) == 400
    again = tmp_path / "again.jsonl"
    result = sluice("simulator", "dataset", "--count", "400", "--seed", "2", "--out", again)
    assert "wrote 400 labelled prompts" in result.output
    assert "small-confidence AUROC" in result.output
    assert again.read_bytes() == data.read_bytes()


def test_router_train_writes_an_artifact_that_loads(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "scorer.json"
    result = sluice("router", "train", "--data", data, "--out", out, "--epochs", "2", "--buckets", "256")
    assert result.exit_code == 0, result.output
    scorer = Scorer.load(out)
    assert f"content hash {scorer.version}" in result.output
    assert "validation:" in result.output
    assert scorer.artifact.spec.buckets == 256
    assert scorer.artifact.metrics.examples + scorer.artifact.metrics.validation_examples == 400
    assert "no cascade combiner" in result.output, "about 80 held-out prompts are too few to fit one"
    assert scorer.artifact.cascade is None


def test_router_train_fits_a_cascade_combiner_that_calibrate_uses(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "scorer.json"
    result = sluice("router", "train", "--data", data, "--out", out, "--validation-share", "0.5")
    assert result.exit_code == 0, result.output
    assert "cascade combiner: on the scorer's held-out prompts" in result.output
    scorer = Scorer.load(out)
    assert scorer.artifact.cascade is not None
    command: list[str | Path] = [
        "router",
        "calibrate",
        "--route",
        "cascade",
        "--data",
        data,
        "--scorer",
        out,
        "--target-cost",
        "0.5",
    ]
    result = sluice(*command)
    assert result.exit_code == 0, result.output
    assert "large model when the small answer's confidence with the scorer's prior < threshold" in result.output
    expected = calibrate("cascade", outcomes("cascade", read_jsonl(data), scorer), Target("cost", 0.5))
    assert f"threshold {expected.threshold:.6f}" in result.output


def test_router_train_combines_several_files(data: Path, tmp_path: Path) -> None:
    extra = tmp_path / "feedback.jsonl"
    write_jsonl(extra, [LabelledPrompt(prompt=f"Say hi to {i}", small_correct=i % 2 == 0) for i in range(50)])
    out = tmp_path / "scorer.json"
    result = sluice("router", "train", "--data", data, "--data", extra, "--out", out, "--validation-share", "0")
    assert result.exit_code == 0, result.output
    assert Scorer.load(out).artifact.metrics.examples == 450


def test_router_calibrate_cascade_prints_the_threshold_and_the_curve(data: Path) -> None:
    result = sluice("router", "calibrate", "--route", "cascade", "--data", data, "--target-cost", "0.5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("cascade on 400 labelled prompts: threshold ")
    assert "large-model share 45.0%, cost 50.0% of always-large" in lines[1]
    header = next(i for i, line in enumerate(lines) if "large share" in line)
    assert len(lines) - header - 2 == 11
    assert lines[header + 2].split()[0] == "0.0%"
    assert lines[-1].split()[0] == "100.0%"


def test_router_calibrate_scored_uses_the_scorer(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "scorer.json"
    sluice("router", "train", "--data", data, "--out", out, "--epochs", "2")
    result = sluice(
        "router", "calibrate", "--route", "scored", "--data", data, "--scorer", out, "--target-large-share", "0.3"
    )
    assert result.exit_code == 0, result.output
    assert "large-model share 30.0%" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--route", "scored", "--target-cost", "0.5"], "--route scored needs --scorer"),
        (["--route", "cascade", "--target-cost", "0.5", "--target-quality", "0.9"], "exactly one of"),
        (["--route", "cascade"], "exactly one of"),
    ],
    ids=["scored-without-scorer", "two-targets", "no-target"],
)
def test_router_calibrate_usage_errors_exit_2(data: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["router", "calibrate", "--data", str(data), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_router_calibrate_reports_an_unreachable_target(data: Path) -> None:
    result = CliRunner().invoke(
        main, ["router", "calibrate", "--route", "cascade", "--data", str(data), "--target-cost", "0.01"]
    )
    assert result.exit_code == 1
    assert "below the cheapest" in result.output


def test_router_train_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(msgspec.json.encode({"prompt": "ok", "small_correct": True}) + b'\n{"prompt": 3}\n')
    result = CliRunner().invoke(main, ["router", "train", "--data", str(bad), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 1
    assert f"{bad}:2:" in result.output


def test_cli_default_cost_ratio_is_the_simulator_price_ratio() -> None:
    assert routing_cli.SMALL_PRICE_RATIO == SMALL_PRICE_RATIO
