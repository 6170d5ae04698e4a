"""Cost from usage and price: exact decimals, cached tokens at their own price."""

from __future__ import annotations

from decimal import Decimal

from gateway.accounting.pricing import TokenUsage, cost_usd, format_usd
from gateway.settings import Price

PRICE = Price(input=Decimal("3.00"), output=Decimal("12.00"), cached_input=Decimal("1.50"))


def test_cost_is_tokens_times_price_per_million() -> None:
    assert cost_usd(TokenUsage(1_000_000, 1_000_000), PRICE) == Decimal("15.00")
    assert cost_usd(TokenUsage(7, 3), PRICE) == Decimal("0.000057")


def test_cached_prompt_tokens_are_charged_at_the_cached_price() -> None:
    assert cost_usd(TokenUsage(1000, 0, cached_tokens=400), PRICE) == Decimal("0.0024")


def test_cached_price_defaults_to_input_and_cached_count_is_capped_at_the_prompt() -> None:
    price = Price(input=Decimal(1), output=Decimal(2))
    assert cost_usd(TokenUsage(10, 0, cached_tokens=50), price) == Decimal("0.00001")


def test_cost_header_is_plain_decimal_without_exponent() -> None:
    assert format_usd(Decimal("0.0000570000")) == "0.000057"
    assert format_usd(Decimal("0E-10")) == "0"
    assert format_usd(Decimal("15.0000000000")) == "15"
