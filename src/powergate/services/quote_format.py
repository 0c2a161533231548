"""A tariff quote as a JSON document: what `powergate tariff quote --format json` prints and the API answers.

Amounts are exact integer micros (``*_micros``) plus their two-decimal display; prices exact decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from powergate.domain.energy import format_quantity
from powergate.domain.money import MICROS_PER_UNIT, format_decimal
from powergate.domain.rating import Charge, MeterQuote, Quarantined, Skipped
from powergate.domain.tariff import Tariff


def quote_json(tariff: Tariff, timezone: str, quotes: Sequence[MeterQuote]) -> dict[str, Any]:
    total = sum(q.total_micros for q in quotes)
    return {
        "tariff": {"id": tariff.id, "name": tariff.name, "commodity": tariff.commodity.value},
        "currency": tariff.currency,
        "unit": tariff.commodity.unit,
        "timezone": timezone,
        "meters": [_meter_json(q) for q in quotes],
        **_money("total_amount", total),
    }


def _meter_json(meter: MeterQuote) -> dict[str, Any]:
    return {
        "meter_id": meter.meter_id,
        "quantity": format_quantity(meter.quantity, 3),
        **_money("energy_amount", meter.energy_micros),
        **_money("standing_amount", meter.standing_micros),
        **_money("total_amount", meter.total_micros),
        "charges": [_charge_json(charge) for charge in meter.charges],
        "standing_charges": [
            {
                "name": line.name,
                "per": line.per.value,
                "first_date": line.first_date.isoformat(),
                "last_date": line.last_date.isoformat(),
                "days": line.days,
                "version": line.version,
                **_money("amount", line.amount_micros),
            }
            for line in meter.standing_charges
        ],
        "skipped": [_reason(r.reading_id, o.reason) for r, o in meter.outcomes if isinstance(o, Skipped)],
        "quarantined": [_reason(r.reading_id, o.reason) for r, o in meter.outcomes if isinstance(o, Quarantined)],
    }


def _charge_json(charge: Charge) -> dict[str, Any]:
    return {
        "reading_id": charge.reading_id,
        "start": charge.start.isoformat(),
        "end": charge.end.isoformat(),
        "quantity": format_quantity(charge.quantity, 3),
        "estimated": charge.estimated,
        **_money("amount", charge.amount_micros),
        "lines": [
            {
                "component": line.component,
                "band": line.band.label if line.band is not None else None,
                "tier": line.tier,
                "version": line.version,
                "quantity": format_quantity(line.quantity, 3),
                "price": exact_decimal(line.price_micros, 4),
                **_money("amount", line.amount_micros),
            }
            for line in charge.lines
        ],
    }


def _money(name: str, micros: int) -> dict[str, Any]:
    return {name: format_decimal(micros), f"{name}_micros": micros}


def _reason(reading_id: str, reason: str) -> dict[str, str]:
    return {"reading_id": reading_id, "reason": reason}


def exact_decimal(micros: int, min_decimals: int) -> str:
    """Micros as exact decimal text with at least ``min_decimals`` decimals: ``528300 -> 0.5283``."""
    value = Decimal(micros) / MICROS_PER_UNIT
    text = f"{value.normalize():f}"
    decimals = len(text.partition(".")[2])
    return f"{value:.{max(decimals, min_decimals)}f}"
