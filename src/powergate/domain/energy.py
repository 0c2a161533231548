"""Energy and water quantities as integers.

Electricity is counted in watt-hours (``energy_wh``): fine enough for 0.01 kWh registers (10 Wh) and for
Modbus meters that report 0.001 kWh. Water is counted in litres (``volume_l``), i.e. 0.001 m³. Prices are
micros per kWh or per m³, so ``quantity x price`` is an integer in nanos (10^-9 of the currency unit) and is
exact; rating turns nanos into micros by its single rule.

The generic word for both is *quantity*; units are named last (``_wh``, ``_l``) per the style guide.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum

WH_PER_KWH = 1000
L_PER_M3 = 1000
NANOS_PER_MICRO = 1000


class Commodity(StrEnum):
    """What a meter measures. Prices are per kWh (electricity) or per m³ (water)."""

    ELECTRICITY = "electricity"
    WATER = "water"

    @property
    def unit(self) -> str:
        return "kWh" if self is Commodity.ELECTRICITY else "m³"

    @property
    def base_per_unit(self) -> int:
        """Integer base quantities (Wh or litres) per display unit (kWh or m³)."""
        return WH_PER_KWH if self is Commodity.ELECTRICITY else L_PER_M3


_QTY_RE = re.compile(r"^[+-]?\d+(\.\d+)?$")


def parse_quantity(text: str | int | Decimal, *, field: str = "quantity") -> int:
    """Parse a decimal kWh (or m³) value into Wh (or litres), exactly; at most 3 decimals."""
    if isinstance(text, (bool, float)):
        raise ValueError(f"{field}: expected a decimal string or integer, got {text!r}")
    if isinstance(text, int):
        return text * WH_PER_KWH
    raw = str(text).strip()
    if not _QTY_RE.match(raw):
        raise ValueError(f"{field}: {text!r} is not a decimal quantity")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{field}: {text!r} is not a decimal quantity") from None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > 3:
        raise ValueError(f"{field}: {text!r} has more than 3 decimals (the finest unit is 0.001)")
    return int(value * WH_PER_KWH)


def format_quantity(quantity: int, decimals: int = 2) -> str:
    """Wh as kWh text (or litres as m³): ``123.45``."""
    value = Decimal(quantity) / WH_PER_KWH
    return f"{value:.{decimals}f}" if decimals >= 3 else f"{value.quantize(Decimal(1).scaleb(-decimals)):f}"


def cost_nanos(quantity: int, price_micros_per_unit: int) -> int:
    """Exact cost in nanos of ``quantity`` Wh (litres) at ``price`` micros per kWh (m³)."""
    return quantity * price_micros_per_unit
