"""Cost of a call from its token usage and the deployment's price (pure, `Decimal`, USD)."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from gateway.settings import Price

_PER_MILLION = Decimal(1_000_000)
_QUANTUM = Decimal("0.0000000001")  # the ledger's numeric(20, 10)


class TokenUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FREE = Price(input=Decimal(0), output=Decimal(0))


def cost_usd(usage: TokenUsage, price: Price) -> Decimal:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    raw = (
        (usage.prompt_tokens - cached) * price.input + cached * cached_price + usage.completion_tokens * price.output
    ) / _PER_MILLION
    return raw.quantize(_QUANTUM)


def format_usd(amount: Decimal) -> str:
    """The `x-sluice-cost-usd` header value: plain decimal, no exponent, trailing zeros dropped."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"
