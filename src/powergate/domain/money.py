"""Money as integers at one fixed scale: micros, 10^-6 of the currency unit.

Why micros: meter prices carry 4 decimals (yuan/kWh) and registers 0.01 kWh, so price x energy is exact at
10^-6. Never use floating point in an accounting system: amounts are ``int`` everywhere money is added up.

Payments and displayed balances are in the currency's minor unit (0.01 for CNY). Converting micros to the
minor unit happens only for display or for an external payment, by one named rule: ``ROUND_HALF_UP`` (away
from zero at .5). Rating never rounds this way: it truncates at the micro and carries the remainder (see
``domain.rating``), so the sum of deductions never drifts from the cost of the total consumption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
"""Ledger scale: one currency unit (1 yuan) is 1,000,000 micros."""

ROUNDING_RULE = ROUND_HALF_UP
"""The one rule for rounding micros to a currency's minor unit (display and external payments)."""


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency with its minor-unit exponent and display symbol."""

    code: str
    exponent: int
    symbol: str

    @property
    def micros_per_minor(self) -> int:
        return MICROS_PER_UNIT // int(10**self.exponent)


CNY = Currency("CNY", 2, "¥")
CURRENCIES: dict[str, Currency] = {
    c.code: c
    for c in (
        CNY,
        Currency("USD", 2, "$"),
        Currency("EUR", 2, "€"),
        Currency("HKD", 2, "HK$"),
        Currency("JPY", 0, "¥"),
    )
}


def currency(code: str) -> Currency:
    """The currency for an ISO code; ``ValueError`` naming the code if it is unknown."""
    try:
        return CURRENCIES[code.upper()]
    except KeyError:
        raise ValueError(f"unknown currency {code!r}; known: {', '.join(sorted(CURRENCIES))}") from None


_AMOUNT_RE = re.compile(r"^[+-]?\d+(\.\d+)?$")


def parse_micros(text: str | int | Decimal, *, field: str = "amount", max_decimals: int = 6) -> int:
    """Parse a decimal amount in currency units ("12.34") into micros, exactly.

    Rejects floats, more than ``max_decimals`` decimals and non-numeric text with a message naming ``field``.
    """
    if isinstance(text, bool):
        raise ValueError(f"{field}: expected a decimal amount, got {text!r}")
    if isinstance(text, float):
        raise ValueError(f"{field}: floats are not accepted for money; write the amount as a string, e.g. '1.50'")
    if isinstance(text, int):
        return text * MICROS_PER_UNIT
    raw = str(text).strip()
    if not _AMOUNT_RE.match(raw):
        raise ValueError(f"{field}: {text!r} is not a decimal amount")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{field}: {text!r} is not a decimal amount") from None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > max_decimals:
        raise ValueError(f"{field}: {text!r} has more than {max_decimals} decimals")
    return int(value * MICROS_PER_UNIT)


def micros_to_decimal(amount_micros: int) -> Decimal:
    """Exact decimal value in currency units."""
    return Decimal(amount_micros) / MICROS_PER_UNIT


def round_to_minor(amount_micros: int, cur: Currency = CNY) -> int:
    """Micros rounded to the currency's minor unit by ``ROUNDING_RULE``, still expressed in micros."""
    step = cur.micros_per_minor
    quotient = (Decimal(amount_micros) / step).quantize(Decimal(1), rounding=ROUNDING_RULE)
    return int(quotient) * step


def minor_to_micros(amount_minor: int, cur: Currency = CNY) -> int:
    """An amount in minor units (fen) as micros."""
    return amount_minor * cur.micros_per_minor


def micros_to_minor(amount_micros: int, cur: Currency = CNY) -> int:
    """Micros in minor units (fen) by ``ROUNDING_RULE``."""
    return round_to_minor(amount_micros, cur) // cur.micros_per_minor


def format_money(amount_micros: int, cur: Currency = CNY, *, symbol: bool = True) -> str:
    """Display form: ``¥1,234.50`` (minor unit, ``ROUNDING_RULE``, thousands separators)."""
    rounded = round_to_minor(amount_micros, cur)
    value = Decimal(rounded) / MICROS_PER_UNIT
    text = f"{abs(value):,.{cur.exponent}f}"
    sign = "-" if rounded < 0 else ""
    return f"{sign}{cur.symbol if symbol else ''}{text}"


def format_decimal(amount_micros: int, decimals: int = 2) -> str:
    """Plain decimal text for machine output (JSON): ``"145.00"``; rounds by ``ROUNDING_RULE``."""
    value = (Decimal(amount_micros) / MICROS_PER_UNIT).quantize(Decimal(1).scaleb(-decimals), rounding=ROUNDING_RULE)
    return f"{value:.{decimals}f}"
