"""The platform's rate convention, in one place: a percentage with two decimals, rounded half up,
and 0 (never an error) for a zero denominator."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

HUNDREDTH = Decimal("0.01")


def percent(numerator: int, denominator: int) -> Decimal:
    if denominator <= 0:
        return Decimal("0.00")
    return (Decimal(100 * numerator) / Decimal(denominator)).quantize(HUNDREDTH, rounding=ROUND_HALF_UP)
