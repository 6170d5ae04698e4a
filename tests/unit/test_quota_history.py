"""The offline ledger checks of `tests/quota_history.py`: exact window counts and exact money sums."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.quota_history import max_admitted_in_any_window, total_cost

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def at(*offsets_s: float) -> list[dt.datetime]:
    return [T0 + dt.timedelta(seconds=s) for s in offsets_s]


@pytest.mark.parametrize(
    ("offsets_s", "window_s", "expected"),
    [
        ((), 10, 0),
        ((0,), 10, 1),
        ((0, 10), 10, 1),
        ((0, 9.999999), 10, 2),
        ((0, 10.000001), 10, 1),
        ((3, 3, 3), 10, 3),
        ((0, 5, 9.999, 10, 14), 10, 4),
        ((14, 0, 10, 5, 9.999), 10, 4),
        ((0, 1, 2, 30, 31, 32, 33), 10, 4),
        ((0, 0.5, 1), 0.5, 1),
    ],
    ids=[
        "empty",
        "one",
        "end-is-excluded",
        "one-microsecond-inside",
        "one-microsecond-outside",
        "same-instant",
        "busiest-window-starts-late",
        "unsorted-input",
        "busiest-burst-is-the-later-one",
        "sub-second-window",
    ],
)
def test_max_admitted_in_any_window_counts_half_open_windows(
    offsets_s: tuple[float, ...], window_s: float, expected: int
) -> None:
    assert max_admitted_in_any_window(at(*offsets_s), window_s) == expected


def test_a_full_window_then_a_full_window_exactly_one_window_later_is_within_the_limit() -> None:
    """What an exact sliding log of 20 per 10 s admits under a steady flood: 20 at t, 20 more at t + 10 s."""
    assert max_admitted_in_any_window(at(*[0.0] * 20, *[10.0] * 20), 10) == 20


def test_one_admission_a_millisecond_early_is_over_the_limit() -> None:
    assert max_admitted_in_any_window(at(*[0.0] * 20, 9.999), 10) == 21


@pytest.mark.parametrize("window_s", [0, -1], ids=["zero", "negative"])
def test_max_admitted_in_any_window_refuses_an_empty_window(window_s: float) -> None:
    with pytest.raises(ValueError, match="window_s"):
        max_admitted_in_any_window(at(0), window_s)


def _brute_force(times: list[dt.datetime], window: dt.timedelta) -> int:
    return max((sum(start <= t < start + window for t in times) for start in times), default=0)


@given(
    st.lists(st.integers(min_value=0, max_value=30_000), max_size=60),
    st.integers(min_value=1, max_value=12_000),
)
def test_max_admitted_in_any_window_agrees_with_counting_every_window(offsets_ms: list[int], window_ms: int) -> None:
    times = [T0 + dt.timedelta(milliseconds=ms) for ms in offsets_ms]
    expected = _brute_force(times, dt.timedelta(milliseconds=window_ms))
    assert max_admitted_in_any_window(times, window_ms / 1000) == expected


def test_total_cost_is_exact() -> None:
    assert total_cost([Decimal("0.1")] * 10) == Decimal("1.000000")
    assert total_cost([Decimal("0.9999999999"), Decimal("0.0000000001")]) == Decimal(1)
    assert total_cost([]) == Decimal(0)


def test_total_cost_refuses_a_float() -> None:
    with pytest.raises(TypeError, match="not a Decimal"):
        total_cost([Decimal("0.5"), 0.5])  # type: ignore[list-item]  # the mistake under test
