"""Tariff editing from a form: a new effective-dated version (flat, TOU with seasons, tiers), validated by the
domain, stored, audited; the 24-hour TOU day bars of a version; quotes of readings under a tariff.

A form is operator text. It becomes a version table in the tariff file format (``domain/tariff_files.py``) and
the whole tariff, with the new version appended, goes through ``parse_tariff``: every check the CLI and the
rating engine rely on (gaps, overlaps, month coverage, prices, versions in order) runs here too, and each problem
is mapped from its file path (``versions[2].tou.seasons[0].schedule[3].band``) back to the form field that holds
it (``seasons[0].schedule``, "line 4: ..."), so the operator sees it next to the field.

Invariants:
- Nothing is stored unless the whole new tariff is valid; the store is a conditional UPDATE on the document read
  (two editors at once: the second is told to reload), and the audit record is in the same transaction.
- A new version starts in the future (site-local wall time of every meter on the tariff): readings already billed
  are never re-priced behind the operator's back.
- The stored document keeps its format: a TOML document gets a ``[[versions]]`` table appended (comments and
  earlier versions untouched); a JSON document gets the version appended to its list.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, insert, select, update

from powergate.domain.calendar import DayType, SiteCalendar
from powergate.domain.energy import parse_quantity
from powergate.domain.rating import MeterQuote, Quarantined, RatingContext, Skipped, quote
from powergate.domain.tariff import (
    MAX_SEASONS,
    SCHEDULE_FIELDS,
    Problem,
    Schedule,
    StandingChargeLine,
    Tariff,
)
from powergate.domain.tariff_files import detect_format, parse_readings, parse_tariff
from powergate.services import backoffice, queries
from powergate.store.audit import MAX_REASON_CHARS, record_audit
from powergate.store.tables import tariffs
from powergate.store.tables_api import tariff_owners

BANDS = ("sharp", "peak", "flat", "valley")
PRICINGS = ("flat", "tou", "tiers")
MAX_LINES = 96
MAX_FIELD_CHARS = 20_000
DEFAULT_ZONE = "Asia/Shanghai"
FORM_FIELD = "_form"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class SeasonForm:
    name: str = ""
    months: str = ""
    schedule: str = ""
    weekend_schedule: str = ""
    holiday_schedule: str = ""


@dataclass(frozen=True, slots=True)
class VersionForm:
    """The version form as typed. Numbers are decimal text (yuan per kWh, kWh); times HH:MM."""

    effective_from: str = ""
    pricing: str = "flat"
    price: str = ""
    tou_prices: Mapping[str, str] = field(default_factory=dict)
    seasons: tuple[SeasonForm, ...] = ()
    tier_mode: str = ""
    tier_blocks: str = ""
    base_allowance: str = ""
    standing_charges: str = ""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Saved:
    tariff_id: str
    version_index: int
    tariff: Tariff


# --- form -> version table -----------------------------------------------------------------------------------


def _lines(text: str) -> list[tuple[int, list[str]]]:
    """Non-empty lines as (line number from 1, words); commas count as spaces."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.replace(",", " ").split()
        if words:
            found.append((number, words))
    return found


def _schedule(text: str, name: str, problems: list[FieldProblem]) -> tuple[list[dict[str, str]], list[int]]:
    """Schedule lines ``08:00 flat`` or ``08:00-10:00 flat`` -> entries, and each entry's line number."""
    entries: list[dict[str, str]] = []
    numbers: list[int] = []
    lines = _lines(text)
    if len(lines) > MAX_LINES:
        problems.append(FieldProblem(name, f"{len(lines)} lines; at most {MAX_LINES}"))
        return [], []
    for number, words in lines:
        if len(words) != 2:
            problems.append(FieldProblem(name, f"line {number}: expected 'HH:MM band' or 'HH:MM-HH:MM band'"))
            continue
        span, band = words
        start, dash, end = span.partition("-")
        entry = {"start": start, "band": band.lower()}
        if dash:
            entry["end"] = end
        entries.append(entry)
        numbers.append(number)
    return entries, numbers


@dataclass(slots=True)
class _Built:
    version: dict[str, Any]
    problems: list[FieldProblem]
    line_numbers: dict[str, list[int]]
    """form field -> the form line number of each entry of its list (to name lines in problems)."""


def build_version(form: VersionForm) -> _Built:
    """The version table for the form, plus problems found before the domain sees it."""
    problems: list[FieldProblem] = []
    lines: dict[str, list[int]] = {}
    version: dict[str, Any] = {"effective_from": form.effective_from.strip()}
    if not version["effective_from"]:
        problems.append(FieldProblem("effective_from", "required: the local date (and time) the prices start"))
    if form.pricing not in PRICINGS:
        problems.append(FieldProblem("pricing", f"choose one of {', '.join(PRICINGS)}"))
    if form.pricing == "flat":
        version["price"] = form.price.strip()
    elif form.pricing == "tou":
        version["tou"] = _tou(form, problems, lines)
    if form.pricing == "tiers" or form.tier_blocks.strip():
        mode = form.tier_mode.strip() or ("price" if form.pricing == "tiers" else "surcharge")
        blocks = []
        lines["tiers.blocks"] = []
        for number, words in _lines(form.tier_blocks)[: MAX_LINES + 1]:
            if len(words) == 1:
                blocks.append({"price": words[0]})
            elif len(words) == 2:
                blocks.append({"up_to": words[0], "price": words[1]})
            else:
                problems.append(FieldProblem("tiers.blocks", f"line {number}: expected 'up_to_kWh price' or 'price'"))
                continue
            lines["tiers.blocks"].append(number)
        version["tiers"] = {"mode": mode, "blocks": blocks}
    if form.base_allowance.strip():
        version["base_allowance"] = form.base_allowance.strip()
    charges = []
    lines["standing_charges"] = []
    for number, words in _lines(form.standing_charges)[: MAX_LINES + 1]:
        if len(words) < 3:
            problems.append(FieldProblem("standing_charges", f"line {number}: expected 'name amount day|month'"))
            continue
        charges.append({"name": " ".join(words[:-2]), "amount": words[-2], "per": words[-1]})
        lines["standing_charges"].append(number)
    if charges:
        version["standing_charges"] = charges
    return _Built(version, problems, lines)


def _tou(form: VersionForm, problems: list[FieldProblem], lines: dict[str, list[int]]) -> dict[str, Any]:
    prices = {band: form.tou_prices.get(band, "").strip() for band in BANDS}
    seasons = []
    given = [s for s in form.seasons if any((s.name.strip(), s.months.strip(), s.schedule.strip()))]
    if len(given) > MAX_SEASONS:
        problems.append(FieldProblem("seasons", f"{len(given)} seasons; at most {MAX_SEASONS}"))
    for index, season in enumerate(given[:MAX_SEASONS]):
        table: dict[str, Any] = {"name": season.name.strip(), "months": _months(season.months)}
        for name in ("schedule", "weekend_schedule", "holiday_schedule"):
            text = getattr(season, name)
            if name != "schedule" and not text.strip():
                continue
            key = f"seasons[{index}].{name}"
            table[name], lines[key] = _schedule(text, key, problems)
        seasons.append(table)
    return {"prices": {band: price for band, price in prices.items() if price}, "seasons": seasons}


def _months(text: str) -> str | list[int]:
    """``7-9`` (a range, may wrap) stays text for the domain to read; ``7, 8, 9`` becomes a list."""
    words = text.replace(",", " ").split()
    if len(words) > 1 and all(w.isdigit() and len(w) <= 2 for w in words):
        return [int(w) for w in words]
    return text.strip()


def _months_text(months: tuple[int, ...]) -> str:
    """A season's months as a range when they run on (``10-6``), else a list."""
    count = len(months)
    if count > 1 and all((months[0] - 1 + k) % 12 + 1 == months[k] for k in range(count)):
        return f"{months[0]}-{months[-1]}"
    return ", ".join(str(m) for m in months)


_PATH_RE = re.compile(r"^versions\[(\d+)\](?:\.(.*))?$")
_LIST_FIELD_RE = re.compile(r"^(tou\.seasons\[\d+\]\.\w+|tiers\.blocks|standing_charges)\[(\d+)\](?:\.(\w+))?$")


def field_of(problem: Problem, index: int, lines: Mapping[str, Sequence[int]]) -> FieldProblem:
    """The form field (and line) a domain problem in ``versions[index]`` belongs to."""
    matched = _PATH_RE.match(problem.path)
    if matched is None or int(matched.group(1)) != index:
        return FieldProblem(FORM_FIELD, str(problem))
    rest = matched.group(2) or ""
    listed = _LIST_FIELD_RE.match(rest)
    if listed is not None:
        name = listed.group(1).removeprefix("tou.")
        position = int(listed.group(2))
        numbers = lines.get(name, [])
        line = numbers[position] if position < len(numbers) else position + 1
        what = f" ({listed.group(3)})" if listed.group(3) else ""
        return FieldProblem(name, f"line {line}{what}: {problem.message}")
    if rest.startswith("tou.seasons[") and rest.count(".") >= 2:
        return FieldProblem(rest.removeprefix("tou."), problem.message)
    direct = {"": "pricing", "tou": "pricing", "tou.seasons": "seasons", "tiers": "tiers.blocks"}
    if rest in direct:
        return FieldProblem(direct[rest], problem.message)
    if rest.startswith("tou.seasons["):
        return FieldProblem(rest.removeprefix("tou."), problem.message)
    return FieldProblem(rest, problem.message)


# --- documents -------------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise AssertionError(f"version tables hold text, lists and tables only, not {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def version_toml(version: Mapping[str, Any], comment: str = "") -> str:
    """One ``[[versions]]`` table; nested values inline, so it appends cleanly to any tariff file."""
    head = f"\n# {comment}\n" if comment else "\n"
    body = "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in version.items())
    return f"{head}[[versions]]\n{body}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="minutes")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.strftime("%H:%M")
    return value


def with_version(document: str, version: Mapping[str, Any], comment: str = "") -> str:
    """The document with ``version`` appended, in the document's own format."""
    if detect_format(document) == "json":
        data = json.loads(document, parse_float=Decimal)
        data.setdefault("versions", []).append(dict(version))
        return json.dumps(_jsonable(data), ensure_ascii=False, indent=2) + "\n"
    appended = document.rstrip("\n") + "\n" + version_toml(version, comment)
    try:
        tomllib.loads(appended)
    except tomllib.TOMLDecodeError:
        # The file writes its versions inline (``versions = [...]``): rewrite it as JSON instead.
        data = tomllib.loads(document, parse_float=Decimal)
        data.setdefault("versions", []).append(dict(version))
        return json.dumps(_jsonable(data), ensure_ascii=False, indent=2) + "\n"
    return appended


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- use cases -------------------------------------------------------------------------------------------------


def _future_problem(
    conn: Connection, tariff_id: str | None, effective_from: dt.datetime, now: dt.datetime
) -> FieldProblem | None:
    zones = backoffice.tariff_timezones(conn, tariff_id) if tariff_id else []
    for zone in zones or [DEFAULT_ZONE]:
        local_now = now.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        if effective_from <= local_now:
            return FieldProblem(
                "effective_from",
                f"must be in the future: it is {local_now:%Y-%m-%d %H:%M} now in {zone}; "
                "readings already billed are not re-priced",
            )
    return None


def _check_reason(reason: str) -> FieldProblem | None:
    if not reason.strip():
        return FieldProblem("reason", "say why the prices change (it goes to the audit log)")
    if len(reason) > MAX_REASON_CHARS:
        return FieldProblem("reason", f"at most {MAX_REASON_CHARS} characters")
    return None


def propose_version(
    document: str, form: VersionForm, comment: str
) -> tuple[str, Tariff | None, int, list[FieldProblem]]:
    """(the document with the form's version appended, the tariff if valid, the new version's index, problems).

    Pure: nothing is read or written; ``add_version`` and ``create_tariff`` store the result.
    """
    built = build_version(form)
    if built.problems:
        return document, None, 0, built.problems
    candidate = with_version(document, built.version, comment)
    tariff, problems = parse_tariff(candidate)
    data = json.loads(candidate) if detect_format(candidate) == "json" else tomllib.loads(candidate)
    index = len(data.get("versions", [])) - 1
    if tariff is None:
        return candidate, None, index, [field_of(p, index, built.line_numbers) for p in problems]
    return candidate, tariff, index, []


def add_version(
    conn: Connection,
    organisation_id: int,
    tariff_id: str,
    form: VersionForm,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> Saved | list[FieldProblem] | None:
    """Append a version to a tariff the organisation may edit; ``None`` if it cannot see the tariff."""
    visible = queries.get_tariff(conn, queries.Scope(organisation_id), tariff_id)
    if visible is None:
        return None
    line, document = visible
    if not line.editable:
        return [FieldProblem(FORM_FIELD, f"tariff {tariff_id} is shared with another organisation; it is read-only")]
    problems: list[FieldProblem] = []
    reason_problem = _check_reason(reason)
    if reason_problem is not None:
        problems.append(reason_problem)
    candidate, tariff, index, found = propose_version(document, form, f"added by {actor} at {now:%Y-%m-%d %H:%M} UTC")
    problems.extend(found)
    if tariff is not None:
        late = _future_problem(conn, tariff_id, tariff.versions[index].effective_from, now)
        if late is not None:
            problems.append(late)
    if problems:
        return problems
    assert tariff is not None
    stored = conn.execute(
        update(tariffs).where(tariffs.c.id == tariff_id, tariffs.c.document == document).values(document=candidate)
    )
    if stored.rowcount != 1:
        return [FieldProblem(FORM_FIELD, "the tariff was changed by someone else just now; reload and try again")]
    detail = {
        "version": index,
        "effective_from": tariff.versions[index].effective_from.isoformat(timespec="minutes"),
        "pricing": form.pricing,
        "document_before": _sha(document),
        "document_after": _sha(candidate),
    }
    record_audit(conn, actor, "add_tariff_version", f"tariff:{tariff_id}", reason.strip(), detail, now)
    return Saved(tariff_id, index, tariff)


def create_tariff(
    conn: Connection,
    organisation_id: int,
    tariff_id: str,
    name: str,
    commodity: str,
    form: VersionForm,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> Saved | list[FieldProblem]:
    """A new tariff owned by the organisation, with the form as its first version (TOML document)."""
    problems: list[FieldProblem] = []
    tariff_id, name = tariff_id.strip(), name.strip()
    if not _ID_RE.match(tariff_id):
        problems.append(
            FieldProblem("tariff_id", "1..64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        )
    elif conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff_id)).first() is not None:
        problems.append(FieldProblem("tariff_id", f"{tariff_id!r} exists already"))
    if not name or len(name) > 200:
        problems.append(FieldProblem("name", "1..200 characters"))
    if commodity not in ("electricity", "water"):
        problems.append(FieldProblem("commodity", "electricity or water"))
    reason_problem = _check_reason(reason)
    if reason_problem is not None:
        problems.append(reason_problem)
    head = "".join(
        f"{key} = {_toml_value(value)}\n"
        for key, value in (("id", tariff_id), ("name", name), ("commodity", commodity), ("currency", "CNY"))
    )
    document = f"# Created in the console by {actor} at {now:%Y-%m-%d %H:%M} UTC\n{head}"
    candidate, tariff, index, found = propose_version(document, form, "")
    problems.extend(found)
    if tariff is not None:
        late = _future_problem(conn, None, tariff.versions[index].effective_from, now)
        if late is not None:
            problems.append(late)
    if problems:
        return problems
    assert tariff is not None
    conn.execute(
        insert(tariffs).values(id=tariff_id, name=name, commodity=commodity, document=candidate, created_at=now)
    )
    conn.execute(insert(tariff_owners).values(tariff_id=tariff_id, organisation_id=organisation_id, created_at=now))
    detail = {"name": name, "commodity": commodity, "document": _sha(candidate)}
    record_audit(conn, actor, "create_tariff", f"tariff:{tariff_id}", reason.strip(), detail, now)
    return Saved(tariff_id, index, tariff)


# --- a version back into the form (to start a new one from the current prices) --------------------------------


def _schedule_text(schedule: Schedule) -> str:
    return "\n".join(f"{_hhmm(p.start_minute)}-{_hhmm(p.end_minute)} {p.band.label}" for p in schedule)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _decimal(micros: int) -> str:
    value = Decimal(micros) / 1_000_000
    return f"{value.normalize():f}"


def form_of(tariff: Tariff, index: int) -> VersionForm:
    """The form filled with version ``index`` (effective_from left empty: a new version needs a new date)."""
    version = tariff.versions[index]
    seasons: tuple[SeasonForm, ...] = ()
    prices: dict[str, str] = {}
    pricing = "flat"
    if version.tou is not None:
        pricing = "tou"
        prices = {band.label: _decimal(price) for band, price in version.tou.prices_micros}
        seasons = tuple(
            SeasonForm(
                s.name,
                _months_text(s.months),
                _schedule_text(s.workday),
                _schedule_text(s.weekend) if s.weekend is not None else "",
                _schedule_text(s.holiday) if s.holiday is not None else "",
            )
            for s in version.tou.seasons
        )
    elif version.tier_prices_energy:
        pricing = "tiers"
    tier_lines = ""
    tier_mode = ""
    if version.tiers is not None:
        tier_mode = version.tiers.mode.value
        tier_lines = "\n".join(
            f"{_decimal(b.up_to_quantity * 1000)} {_decimal(b.price_micros)}"
            if b.up_to_quantity is not None
            else _decimal(b.price_micros)
            for b in version.tiers.blocks
        )
    charges = "\n".join(f"{c.name} {_decimal(c.amount_micros)} {c.per.value}" for c in version.standing_charges)
    return VersionForm(
        effective_from="",
        pricing=pricing,
        price=_decimal(version.price_micros) if version.price_micros is not None else "",
        tou_prices=prices,
        seasons=seasons,
        tier_mode=tier_mode,
        tier_blocks=tier_lines,
        base_allowance=_decimal(version.base_allowance_quantity * 1000) if version.base_allowance_quantity else "",
        standing_charges=charges,
    )


# --- the 24-hour day bars --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    start_minute: int
    end_minute: int
    band: str

    @property
    def label(self) -> str:
        return f"{_hhmm(self.start_minute)}-{_hhmm(self.end_minute)}"


@dataclass(frozen=True, slots=True)
class DayBar:
    season: str
    months: tuple[int, ...]
    day_type: str
    """``workday``, ``weekend`` or ``holiday`` (a day type without its own schedule uses the workday's)."""
    segments: tuple[Segment, ...]


def day_bars(tariff: Tariff, index: int) -> list[DayBar]:
    """The TOU schedule of version ``index`` as day bars: per season, per day type that has its own schedule."""
    tou = tariff.versions[index].tou
    if tou is None:
        return []
    bars = []
    for season in tou.seasons:
        for _field_name, day_type in SCHEDULE_FIELDS:
            schedule = season.schedule_for(day_type)
            if day_type is not DayType.WORKDAY and schedule is season.workday:
                continue
            ordered = sorted(schedule, key=lambda p: p.start_minute)
            segments = tuple(Segment(p.start_minute, p.end_minute, p.band.label) for p in ordered)
            bars.append(DayBar(season.name, season.months, day_type.value, segments))
    return bars


# --- the quote tool ---------------------------------------------------------------------------------------------

MAX_QUOTE_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """Charge lines of one meter summed per (component, band, tier, price, version); exact integers."""

    component: str
    band: str | None
    tier: int | None
    price_micros: int
    version: int
    quantity: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class MeterQuoteView:
    meter_id: str
    quantity: int
    energy_micros: int
    standing_micros: int
    total_micros: int
    lines: tuple[QuoteLine, ...]
    standing: tuple[StandingChargeLine, ...]
    skipped: tuple[tuple[str, str], ...]
    quarantined: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class QuoteResult:
    timezone: str
    meters: tuple[MeterQuoteView, ...]

    @property
    def total_micros(self) -> int:
        return sum(m.total_micros for m in self.meters)


def quote_readings(tariff: Tariff, text: str, timezone: str, max_power_kw: str = "100") -> QuoteResult | list[str]:
    """What a readings file (CSV or JSON) costs under ``tariff``: the same rating as ``powergate tariff quote``
    (first reading of each meter is its baseline; China's calendar in ``timezone``); or the problems found."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return [f"timezone: {timezone[:64]!r} is not an IANA time zone such as Asia/Shanghai"]
    try:
        max_power_w = parse_quantity(max_power_kw, field="max_power_kw")
    except ValueError as error:
        return [str(error)]
    if max_power_w <= 0:
        return ["max_power_kw: must be above 0"]
    readings, problems = parse_readings(text)
    if problems:
        return [str(p) for p in problems[:MAX_QUOTE_PROBLEMS]]
    if not readings:
        return ["readings: paste or upload a readings file (reading_id, meter_id, timestamp, total_kwh, ...)"]
    context = RatingContext(tariff, SiteCalendar.china(), zone, max_power_w=max_power_w)
    return QuoteResult(timezone, tuple(_meter_view(q) for q in quote(readings, context)))


def _meter_view(meter: MeterQuote) -> MeterQuoteView:
    totals: dict[tuple[str, str | None, int | None, int, int], list[int]] = {}
    for line in (line for charge in meter.charges for line in charge.lines):
        band = line.band.label if line.band is not None else None
        cell = totals.setdefault((line.component, band, line.tier, line.price_micros, line.version), [0, 0])
        cell[0] += line.quantity
        cell[1] += line.amount_micros
    lines = tuple(QuoteLine(c, b, t, p, v, q, a) for (c, b, t, p, v), (q, a) in totals.items())
    skipped = tuple((r.reading_id, o.reason) for r, o in meter.outcomes if isinstance(o, Skipped))
    quarantined = tuple((r.reading_id, o.reason) for r, o in meter.outcomes if isinstance(o, Quarantined))
    return MeterQuoteView(
        meter.meter_id, meter.quantity, meter.energy_micros, meter.standing_micros, meter.total_micros, lines,
        meter.standing_charges, skipped, quarantined,
    )  # fmt: skip


def price_text(micros: int, min_decimals: int = 4) -> str:
    """Micros per unit as exact decimal text with at least ``min_decimals`` places: ``528300 -> 0.5283``."""
    value = Decimal(micros) / 1_000_000
    decimals = len(f"{value.normalize():f}".partition(".")[2])
    return f"{value:.{max(decimals, min_decimals)}f}"


__all__ = [
    "DayBar",
    "FieldProblem",
    "MeterQuoteView",
    "QuoteLine",
    "QuoteResult",
    "Saved",
    "SeasonForm",
    "Segment",
    "VersionForm",
    "add_version",
    "build_version",
    "create_tariff",
    "day_bars",
    "field_of",
    "form_of",
    "price_text",
    "propose_version",
    "quote_readings",
    "version_toml",
    "with_version",
]
