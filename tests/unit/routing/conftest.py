"""Shared labelled data: simulated once per session (8,000 prompts take about two seconds)."""

from __future__ import annotations

import pytest

from gateway.routing.dataset import LabelledPrompt, label, split
from gateway.routing.prompts import generate
from gateway.routing.scorer import Scorer
from gateway.routing.train import train

COUNT = 8000


@pytest.fixture(name="records", scope="session")
async def fx_records() -> list[LabelledPrompt]:
    return await label(generate(COUNT, seed=1))


@pytest.fixture(name="halves", scope="session")
def fx_halves(records: list[LabelledPrompt]) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """(train, held out): split by prompt hash, so a repeated prompt is never on both sides."""
    return split(records, 0.5)


@pytest.fixture(name="scorer", scope="session")
def fx_scorer(halves: tuple[list[LabelledPrompt], list[LabelledPrompt]]) -> Scorer:
    training, _ = halves
    return Scorer(train(training))
