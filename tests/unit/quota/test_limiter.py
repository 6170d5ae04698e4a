"""USD → nano-USD: the integer unit every quota counter in Redis holds."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quota.limiter import to_nano


@pytest.mark.parametrize(
    ("usd", "nano"),
    [
        ("0", 0),
        ("1", 1_000_000_000),
        ("0.000000001", 1),
        ("0.0001234567", 123_457),
        ("0.00000000001", 1),
        ("9000000", 9_000_000_000_000_000),
    ],
    ids=["zero", "a-dollar", "one-nano", "rounds-up", "sub-nano-rounds-up", "largest-exact-in-lua"],
)
def test_to_nano_rounds_up_so_charges_never_undercount(usd: str, nano: int) -> None:
    assert to_nano(Decimal(usd)) == nano
