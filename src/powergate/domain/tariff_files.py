"""Tariff files (TOML or JSON) and readings files (CSV or JSON) into the domain model.

Both readers take text (the caller does the I/O) and collect every problem they find as a ``Problem`` naming
the field path as written in the file, e.g. ``versions[0].tou.seasons[1].schedule[2].band: unknown band
'midpeak'; expected sharp, peak, flat, valley``. ``parse_*`` return (value or None, problems);
``load_*`` return the value or raise ``DataFileError`` carrying the problems.

Exactness: numbers are read as ``Decimal`` (``parse_float=Decimal``) so ``price = 0.5283`` is exact; prices
become integer micros, quantities (kWh or m³, up to 3 decimals) integer Wh or litres. A tariff that parses is
then checked by ``Tariff.problems()`` (gaps, overlaps, month coverage, thresholds, prices), so a returned
tariff is always valid for rating. Unknown fields are problems too: a typo must not silently drop a price.
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar

from powergate.domain.energy import Commodity, parse_quantity
from powergate.domain.money import parse_micros
from powergate.domain.rating import Reading, ReadingKind
from powergate.domain.tariff import (
    BAND_LABELS,
    BANDS_BY_LABEL,
    MINUTES_PER_DAY,
    Band,
    ChargePeriod,
    Cycle,
    CyclePeriod,
    Problem,
    Season,
    StandingCharge,
    Tariff,
    TariffVersion,
    TierBlock,
    TierMode,
    Tiers,
    Tou,
    TouPeriod,
)

MAX_FILE_CHARS = 10_000_000
MAX_READINGS = 1_000_000
MAX_ID_CHARS = 64
E = TypeVar("E")


class DataFileError(ValueError):
    """A file that could not be read into the model; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(f"{prefix}{problem}" for problem in self.problems))


def detect_format(text: str, name: str | None = None) -> str:
    """``json``, ``toml`` or ``csv`` from a file name's suffix, else from the text's first character."""
    if name is not None:
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if suffix in {"json", "toml", "csv"}:
            return suffix
    stripped = text.lstrip()
    return "json" if stripped.startswith(("{", "[")) else "toml"


def load_tariff(text: str, *, fmt: str | None = None, source: str = "") -> Tariff:
    """A valid tariff from TOML or JSON text, or ``DataFileError`` naming every bad field."""
    tariff, problems = parse_tariff(text, fmt=fmt)
    if tariff is None:
        raise DataFileError(problems, source)
    return tariff


def parse_tariff(text: str, *, fmt: str | None = None) -> tuple[Tariff | None, tuple[Problem, ...]]:
    """(tariff, ()) when the text is a valid tariff, else (None, problems)."""
    document, problems = _parse_document(text, fmt or detect_format(text))
    if document is None:
        return None, problems
    reader = _Reader()
    tariff = reader.tariff(document)
    if reader.problems:
        return None, tuple(reader.problems)
    assert tariff is not None
    found = tariff.problems()
    return (None, found) if found else (tariff, ())


def _parse_document(text: str, fmt: str) -> tuple[Mapping[str, Any] | None, tuple[Problem, ...]]:
    if len(text) > MAX_FILE_CHARS:
        return None, (Problem("", f"file is {len(text)} characters; at most {MAX_FILE_CHARS}"),)
    try:
        if fmt == "json":
            document = json.loads(text, parse_float=Decimal)
        elif fmt == "toml":
            document = tomllib.loads(text, parse_float=Decimal)
        else:
            return None, (Problem("", f"unknown tariff format {fmt!r}; expected toml or json"),)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        return None, (Problem("", f"not valid {fmt.upper()}: {error}"),)
    if not isinstance(document, dict):
        return None, (Problem("", "the tariff must be a table (an object) at the top level"),)
    return document, ()


class _Reader:
    """Walks a parsed document, building the model and collecting problems with their paths."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    # -- generic fields --

    def table(self, value: object, path: str, known: set[str]) -> Mapping[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {_kind(value)}")
            return None
        for key in value:
            if key not in known:
                self.problem(f"{path}.{key}" if path else key, f"unknown field; expected {', '.join(sorted(known))}")
        return value

    def items(self, value: object, path: str, limit: int) -> list[Any]:
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {_kind(value)}")
            return []
        if len(value) > limit:
            self.problem(path, f"{len(value)} entries; at most {limit}")
            return []
        return value

    def text(self, value: object, path: str, limit: int = 200) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"expected text, got {_kind(value)}")
            return None
        if len(value) > limit:
            self.problem(path, f"longer than {limit} characters")
            return None
        return value

    def choice(self, value: object, path: str, enum: Callable[[str], E], names: str) -> E | None:
        if isinstance(value, str):
            try:
                return enum(value)
            except ValueError:
                pass
        self.problem(path, f"unknown value {value!r}; expected {names}")
        return None

    def integer(self, value: object, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected a whole number, got {value!r}")
            return None
        return value

    def price(self, value: object, path: str) -> int | None:
        return self._convert(lambda: parse_micros(_decimal_text(value), field=path), path)

    def quantity(self, value: object, path: str) -> int | None:
        return self._convert(lambda: parse_quantity(_decimal_text(value), field=path), path)

    def _convert(self, convert: Callable[[], int], path: str) -> int | None:
        try:
            return convert()
        except (ValueError, TypeError) as error:
            message = str(error)
            self.problem(path, message.removeprefix(f"{path}: "))
            return None

    # -- the tariff --

    def tariff(self, document: Mapping[str, Any]) -> Tariff | None:
        doc = self.table(document, "", {"id", "name", "commodity", "currency", "cycle", "versions"})
        assert doc is not None
        if "id" not in doc:
            self.problem("id", "missing")
        tariff_id = self.text(doc.get("id", ""), "id", MAX_ID_CHARS)
        name = self.text(doc.get("name", tariff_id or ""), "name")
        commodity = self.choice(doc.get("commodity", "electricity"), "commodity", Commodity, "electricity, water")
        currency = self.text(doc.get("currency", "CNY"), "currency", 8)
        cycle = self.cycle(doc["cycle"]) if "cycle" in doc else Cycle()
        if "versions" not in doc:
            self.problem("versions", "missing; a tariff needs at least one version")
        listed = self.items(doc["versions"], "versions", 1000) if "versions" in doc else []
        versions = [self.version(v, f"versions[{i}]") for i, v in enumerate(listed)]
        if self.problems:
            return None
        assert tariff_id is not None and name is not None and commodity is not None and currency is not None
        assert cycle is not None and all(v is not None for v in versions)
        return Tariff(tariff_id, name, commodity, currency, tuple(v for v in versions if v is not None), cycle)

    def cycle(self, value: object) -> Cycle | None:
        table = self.table(value, "cycle", {"period", "start_day", "start_month"})
        if table is None:
            return None
        period = self.choice(table.get("period", "monthly"), "cycle.period", CyclePeriod, "monthly, annual")
        start_day = self.integer(table.get("start_day", 1), "cycle.start_day")
        start_month = self.integer(table.get("start_month", 1), "cycle.start_month")
        if period is None or start_day is None or start_month is None:
            return None
        if period is CyclePeriod.MONTHLY and "start_month" in table:
            self.problem("cycle.start_month", "only for annual cycles")
        return Cycle(period, start_month, start_day)

    def version(self, value: object, path: str) -> TariffVersion | None:
        known = {"effective_from", "price", "tou", "tiers", "base_allowance", "standing_charges"}
        table = self.table(value, path, known)
        if table is None:
            return None
        effective_from = self.effective_from(table.get("effective_from"), f"{path}.effective_from")
        price = self.price(table["price"], f"{path}.price") if "price" in table else None
        tou = self.tou(table["tou"], f"{path}.tou") if "tou" in table else None
        tiers = self.tiers(table["tiers"], f"{path}.tiers") if "tiers" in table else None
        allowance = self.quantity(table.get("base_allowance", 0), f"{path}.base_allowance")
        charges = [
            self.standing_charge(item, f"{path}.standing_charges[{i}]")
            for i, item in enumerate(self.items(table.get("standing_charges", []), f"{path}.standing_charges", 32))
        ]
        if effective_from is None or allowance is None or any(c is None for c in charges):
            return None
        return TariffVersion(effective_from, price, tou, tiers, allowance, tuple(c for c in charges if c is not None))

    def effective_from(self, value: object, path: str) -> datetime | None:
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                self.problem(path, "a site-local wall time: write it without a UTC offset")
                return None
            return value
        if isinstance(value, date):
            return datetime.combine(value, time())
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is None:
                return parsed
        self.problem(path, f"expected a local date or date-time like 2025-07-01 or 2025-07-01T08:00, got {value!r}")
        return None

    def tou(self, value: object, path: str) -> Tou | None:
        table = self.table(value, path, {"prices", "seasons"})
        if table is None:
            return None
        prices_table = self.table(table.get("prices"), f"{path}.prices", set(BANDS_BY_LABEL))
        prices: list[tuple[Band, int]] = []
        for label, band in BANDS_BY_LABEL.items():
            if prices_table is not None and label in prices_table:
                price = self.price(prices_table[label], f"{path}.prices.{label}")
                if price is not None:
                    prices.append((band, price))
        seasons = [
            self.season(item, f"{path}.seasons[{i}]")
            for i, item in enumerate(self.items(table.get("seasons"), f"{path}.seasons", 12))
        ]
        if any(s is None for s in seasons):
            return None
        return Tou(tuple(prices), tuple(s for s in seasons if s is not None))

    def season(self, value: object, path: str) -> Season | None:
        known = {"name", "months", "schedule", "weekend_schedule", "holiday_schedule"}
        table = self.table(value, path, known)
        if table is None:
            return None
        name = self.text(table.get("name", ""), f"{path}.name")
        months = self.months(table.get("months"), f"{path}.months")
        if "schedule" not in table:
            self.problem(f"{path}.schedule", "missing; the workday schedule is required")
        workday = self.schedule(table.get("schedule", []), f"{path}.schedule")
        weekend = (
            self.schedule(table["weekend_schedule"], f"{path}.weekend_schedule")
            if "weekend_schedule" in table
            else None
        )
        holiday = (
            self.schedule(table["holiday_schedule"], f"{path}.holiday_schedule")
            if "holiday_schedule" in table
            else None
        )
        if name is None or months is None or workday is None:
            return None
        if ("weekend_schedule" in table and weekend is None) or ("holiday_schedule" in table and holiday is None):
            return None
        return Season(name, months, workday, weekend, holiday)

    def months(self, value: object, path: str) -> tuple[int, ...] | None:
        """``"7-9"`` (a range, may wrap: ``"11-2"``), ``7`` or a list ``[7, 8, 9]``."""
        if isinstance(value, list) and all(isinstance(m, int) and not isinstance(m, bool) for m in value):
            return tuple(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, str):
            first, _, last = value.partition("-")
            if first.strip().isdigit() and (not last or last.strip().isdigit()):
                start, end = int(first), int(last or first)
                if 1 <= start <= 12 and 1 <= end <= 12:
                    count = (end - start) % 12 + 1
                    return tuple((start - 1 + k) % 12 + 1 for k in range(count))
        self.problem(path, f'expected a month range like "7-9" or a list of months 1..12, got {value!r}')
        return None

    def schedule(self, value: object, path: str) -> tuple[TouPeriod, ...] | None:
        entries = self.items(value, path, 96)
        starts: list[int | None] = []
        ends: list[int | None] = []
        bands: list[Band | None] = []
        for index, entry in enumerate(entries):
            entry_path = f"{path}[{index}]"
            table = self.table(entry, entry_path, {"start", "end", "band"})
            if table is None:
                return None
            starts.append(self.clock(table.get("start"), f"{entry_path}.start", allow_24=False))
            ends.append(self.clock(table["end"], f"{entry_path}.end", allow_24=True) if "end" in table else None)
            bands.append(self.band(table.get("band"), f"{entry_path}.band"))
        if any(s is None for s in starts) or any(b is None for b in bands):
            return None
        known_starts = sorted({s for s in starts if s is not None})
        periods = []
        for start, end, band in zip(starts, ends, bands, strict=True):
            assert start is not None and band is not None
            if end is None:
                # A period written without an end runs to the next start: only explicit ends can leave gaps.
                end = next((s for s in known_starts if s > start), MINUTES_PER_DAY)
            periods.append(TouPeriod(start, end, band))
        return tuple(periods)

    def clock(self, value: object, path: str, *, allow_24: bool) -> int | None:
        if isinstance(value, time):
            value = value.strftime("%H:%M") if not value.second else value.isoformat()
        if isinstance(value, str):
            hours, sep, minutes = value.partition(":")
            if sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2:
                minute = int(hours) * 60 + int(minutes)
                if int(minutes) < 60 and (minute < MINUTES_PER_DAY or (allow_24 and minute == MINUTES_PER_DAY)):
                    return minute
        limit = "24:00" if allow_24 else "23:59"
        self.problem(path, f"expected a time of day HH:MM from 00:00 to {limit}, got {value!r}")
        return None

    def band(self, value: object, path: str) -> Band | None:
        band = BANDS_BY_LABEL.get(value) if isinstance(value, str) else None
        if band is None:
            self.problem(path, f"unknown band {value!r}; expected {BAND_LABELS}")
        return band

    def tiers(self, value: object, path: str) -> Tiers | None:
        table = self.table(value, path, {"mode", "blocks"})
        if table is None:
            return None
        if "mode" not in table:
            self.problem(f"{path}.mode", "missing; expected price or surcharge")
        mode = self.choice(table.get("mode"), f"{path}.mode", TierMode, "price, surcharge") if "mode" in table else None
        blocks = [
            self.tier_block(item, f"{path}.blocks[{i}]")
            for i, item in enumerate(self.items(table.get("blocks"), f"{path}.blocks", 16))
        ]
        if mode is None or any(b is None for b in blocks):
            return None
        return Tiers(mode, tuple(b for b in blocks if b is not None))

    def tier_block(self, value: object, path: str) -> TierBlock | None:
        table = self.table(value, path, {"up_to", "price"})
        if table is None:
            return None
        up_to = self.quantity(table["up_to"], f"{path}.up_to") if "up_to" in table else None
        if "price" not in table:
            self.problem(f"{path}.price", "missing")
            return None
        price = self.price(table["price"], f"{path}.price")
        if price is None or ("up_to" in table and up_to is None):
            return None
        return TierBlock(up_to, price)

    def standing_charge(self, value: object, path: str) -> StandingCharge | None:
        table = self.table(value, path, {"name", "amount", "per"})
        if table is None:
            return None
        name = self.text(table.get("name"), f"{path}.name", MAX_ID_CHARS)
        amount = self.price(table.get("amount"), f"{path}.amount")
        per = self.choice(table.get("per"), f"{path}.per", ChargePeriod, "day, month")
        if name is None or amount is None or per is None:
            return None
        return StandingCharge(name, amount, per)


def _decimal_text(value: object) -> str | int | Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"expected a decimal number, got {value!r}")
    return value


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# --- readings files ---

READING_FIELDS = (
    "reading_id",
    "meter_id",
    "timestamp",
    "total_kwh",
    "sharp_kwh",
    "peak_kwh",
    "flat_kwh",
    "valley_kwh",
    "kind",
)
"""Columns of a readings CSV (and keys of a readings JSON object); for water ``_m3`` replaces ``_kwh``."""
_BAND_FIELDS = ("sharp", "peak", "flat", "valley")


def load_readings(text: str, *, fmt: str | None = None, source: str = "") -> tuple[Reading, ...]:
    readings, problems = parse_readings(text, fmt=fmt)
    if problems:
        raise DataFileError(problems, source)
    return readings


def parse_readings(text: str, *, fmt: str | None = None) -> tuple[tuple[Reading, ...], tuple[Problem, ...]]:
    """Readings from CSV (a header row, then one reading a row) or JSON (a list or ``{"readings": [...]}``).

    Quantities are kWh (or m³) with up to 3 decimals; timestamps ISO 8601 with a UTC offset, stored as UTC.
    """
    if len(text) > MAX_FILE_CHARS:
        return (), (Problem("", f"file is {len(text)} characters; at most {MAX_FILE_CHARS}"),)
    fmt = fmt or ("json" if text.lstrip().startswith(("{", "[")) else "csv")
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = [(f"line {reader.line_num}", row) for row in reader]
    elif fmt == "json":
        try:
            document = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as error:
            return (), (Problem("", f"not valid JSON: {error}"),)
        items = document.get("readings") if isinstance(document, dict) else document
        if not isinstance(items, list):
            return (), (Problem("readings", "expected a list of readings"),)
        rows = [(f"readings[{i}]", item if isinstance(item, dict) else {}) for i, item in enumerate(items)]
    else:
        return (), (Problem("", f"unknown readings format {fmt!r}; expected csv or json"),)
    if len(rows) > MAX_READINGS:
        return (), (Problem("", f"{len(rows)} readings; at most {MAX_READINGS}"),)
    problems: list[Problem] = []
    readings = [_reading(path, row, problems) for path, row in rows]
    return tuple(r for r in readings if r is not None), tuple(problems)


def _reading(path: str, row: Mapping[str, Any], problems: list[Problem]) -> Reading | None:
    before = len(problems)

    def field(name: str) -> Any:
        value = row.get(name)
        return None if value is None or value == "" else value

    def quantity(stem: str) -> int | None:
        value = field(f"{stem}_kwh") if field(f"{stem}_kwh") is not None else field(f"{stem}_m3")
        if value is None:
            return None
        try:
            return parse_quantity(_decimal_text(value), field=f"{path}.{stem}")
        except ValueError as error:
            problems.append(Problem("", str(error)))
            return None

    reading_id, meter_id = field("reading_id"), field("meter_id")
    for name, value in (("reading_id", reading_id), ("meter_id", meter_id)):
        if not isinstance(value, str | int) or isinstance(value, bool) or len(str(value)) > MAX_ID_CHARS:
            problems.append(Problem(f"{path}.{name}", f"expected an id of 1..{MAX_ID_CHARS} characters"))
    at = _timestamp(field("timestamp"), f"{path}.timestamp", problems)
    total = quantity("total")
    if total is None and len(problems) == before:
        problems.append(Problem(f"{path}.total_kwh", "missing"))
    bands = [quantity(stem) for stem in _BAND_FIELDS]
    given = [b is not None for b in bands]
    if any(given) and not all(given):
        problems.append(Problem(path, "give all four band registers (sharp, peak, flat, valley) or none"))
    kind_text = field("kind") or "regular"
    kind = next((k for k in ReadingKind if k.value == kind_text), None)
    if kind is None:
        problems.append(Problem(f"{path}.kind", f"unknown kind {kind_text!r}; expected regular, final, initial"))
    if len(problems) > before:
        return None
    assert at is not None and total is not None and kind is not None
    sharp, peak, flat, valley = bands
    bands_wh = None
    if sharp is not None and peak is not None and flat is not None and valley is not None:
        bands_wh = (sharp, peak, flat, valley)
    return Reading(str(reading_id), str(meter_id), at, total, bands_wh, kind)


def _timestamp(value: object, path: str, problems: list[Problem]) -> datetime | None:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        if parsed is not None:
            problems.append(Problem(path, f"{value!r} has no UTC offset; write e.g. 2025-01-01T08:00:00+08:00"))
            return None
    problems.append(Problem(path, f"expected an ISO 8601 time with a UTC offset, got {value!r}"))
    return None
