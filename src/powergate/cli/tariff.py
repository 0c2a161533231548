"""``powergate tariff``: check a tariff file, or quote what a readings file costs under a tariff.

    powergate tariff check FILE [FILE ...]
    powergate tariff quote --tariff FILE --readings FILE [--format json|table] [--timezone Asia/Shanghai]
                           [--max-power-kw N]

``check`` prints every problem (``file: field.path: message``) and exits 1 if any file has one. ``quote``
rates each meter's readings from scratch (its first reading is the baseline) with the site calendar of China
(statutory holidays and make-up workdays) in the given time zone, and prints the charges, the standing charges
for the days covered and the totals. JSON amounts are exact integer micros plus a 2-decimal display value.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import format_quantity, parse_quantity
from powergate.domain.money import format_decimal
from powergate.domain.rating import (
    MeterQuote,
    Quarantined,
    RatingContext,
    Skipped,
    quote,
)
from powergate.domain.tariff import Tariff
from powergate.domain.tariff_files import DataFileError, detect_format, load_readings, load_tariff
from powergate.services.quote_format import exact_decimal, quote_json

MAX_INPUT_BYTES = 50_000_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tariff", help="check tariff files and quote readings against a tariff")
    commands = parser.add_subparsers(title="tariff commands", metavar="COMMAND", required=True)

    check = commands.add_parser("check", help="validate tariff files (exit 1 and print each problem)")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(handler=run_check)

    quote_parser = commands.add_parser("quote", help="price a readings file (CSV or JSON) under a tariff")
    quote_parser.add_argument("--tariff", required=True, type=Path, help="tariff file (TOML or JSON)")
    quote_parser.add_argument("--readings", required=True, type=Path, help="readings file (CSV or JSON)")
    quote_parser.add_argument("--format", choices=("json", "table"), default="json")
    quote_parser.add_argument("--timezone", default="Asia/Shanghai", help="the site's time zone (IANA name)")
    quote_parser.add_argument(
        "--max-power-kw",
        default="100",
        help="readings above this average power are quarantined (default 100)",
    )
    quote_parser.set_defaults(handler=run_quote)


def run_check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            tariff = load_tariff(_read(path), fmt=detect_format("", path.name), source=str(path))
        except (OSError, DataFileError) as error:
            print(error, file=sys.stderr)
            failed = True
            continue
        print(f"{path}: ok: {tariff.id} ({tariff.commodity.value}, {len(tariff.versions)} version(s))")
    return 1 if failed else 0


def run_quote(args: argparse.Namespace) -> int:
    try:
        tariff = load_tariff(_read(args.tariff), fmt=detect_format("", args.tariff.name), source=str(args.tariff))
        readings_text = _read(args.readings)
        readings = load_readings(readings_text, fmt=_readings_format(args.readings), source=str(args.readings))
        tz = ZoneInfo(args.timezone)
        max_power_w = parse_quantity(args.max_power_kw, field="--max-power-kw")
    except (OSError, DataFileError, ValueError, ZoneInfoNotFoundError) as error:
        print(error, file=sys.stderr)
        return 1
    if max_power_w <= 0:
        print("--max-power-kw: must be above 0", file=sys.stderr)
        return 1
    ctx = RatingContext(tariff, SiteCalendar.china(), tz, max_power_w=max_power_w)
    quotes = quote(readings, ctx)
    if args.format == "json":
        print(json.dumps(quote_json(tariff, args.timezone, quotes), indent=2, ensure_ascii=False))
    else:
        print(quote_table(tariff, tz, quotes))
    return 0


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise OSError(f"{path}: larger than {MAX_INPUT_BYTES} bytes")
    return path.read_text(encoding="utf-8")


def _readings_format(path: Path) -> str | None:
    suffix = path.suffix.lower().lstrip(".")
    return suffix if suffix in {"csv", "json"} else None


# --- table ---


def quote_table(tariff: Tariff, tz: ZoneInfo, quotes: Sequence[MeterQuote]) -> str:
    unit = tariff.commodity.unit
    out = [f"Tariff {tariff.id}: {tariff.name} ({tariff.currency}, {unit}, times in {tz.key})", ""]
    for meter in quotes:
        out.append(f"Meter {meter.meter_id}")
        rows = [("reading", "from", "to", unit, "amount", "")]
        for c in meter.charges:
            span = (f"{c.start.astimezone(tz):%Y-%m-%d %H:%M}", f"{c.end.astimezone(tz):%Y-%m-%d %H:%M}")
            estimate = "estimated" if c.estimated else ""
            amount = format_decimal(c.amount_micros)
            rows.append((c.reading_id, *span, format_quantity(c.quantity, 3), amount, estimate))
        out.extend(_columns(rows))
        out.extend(f"  {row}" for row in _line_summary(meter))
        for s in meter.standing_charges:
            dates = f"{s.first_date}..{s.last_date}"
            out.append(f"  standing: {s.name} ({s.per.value}) {dates}: {format_decimal(s.amount_micros)}")
        for reading, outcome in meter.outcomes:
            if isinstance(outcome, Skipped | Quarantined):
                label = "skipped" if isinstance(outcome, Skipped) else "QUARANTINED"
                out.append(f"  {label} {reading.reading_id}: {outcome.reason}")
        out.append(
            f"  total {format_quantity(meter.quantity, 3)} {unit}: "
            f"energy {format_decimal(meter.energy_micros)}"
            f" + standing {format_decimal(meter.standing_micros)} = {format_decimal(meter.total_micros)}"
        )
        out.append("")
    out.append(f"Total {format_decimal(sum(q.total_micros for q in quotes))} {tariff.currency}")
    return "\n".join(out)


def _line_summary(meter: MeterQuote) -> list[str]:
    totals: dict[tuple[str, str, str, int, int], list[int]] = {}
    for line in (line for charge in meter.charges for line in charge.lines):
        band = line.band.label if line.band is not None else ""
        tier = f"tier {line.tier + 1}" if line.tier is not None else ""
        entry = totals.setdefault((line.component, band, tier, line.price_micros, line.version), [0, 0])
        entry[0] += line.quantity
        entry[1] += line.amount_micros
    rows = [("component", "band", "tier", "price", "quantity", "amount", "version")]
    for (component, band, tier, price, version), (quantity, amount) in totals.items():
        shown = (exact_decimal(price, 4), format_quantity(quantity, 3), format_decimal(amount), str(version))
        rows.append((component, band, tier, *shown))
    return _columns(rows) if len(rows) > 1 else []


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
