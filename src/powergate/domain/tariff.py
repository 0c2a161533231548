"""The tariff model: what a unit of energy (or water) costs, when, and how it is validated.

A ``Tariff`` is a list of effective-dated ``TariffVersion``s. Each version applies from its ``effective_from``
(a site-local wall time) until the next version starts, so a price change at a date splits billing at that
instant. A version prices energy in one of three ways:

- a flat ``price_micros`` per kWh (per m³ for water);
- TOU (``Tou``): a price per band (sharp / peak / flat / valley, the meter's rates 1..4) and seasons (sets of
  months), each with a band schedule per day type (workday / weekend / holiday; a missing day type uses the
  workday schedule) covering 00:00-24:00 with no gap and no overlap;
- tiers in ``price`` mode: the tier's price is the whole energy price (no TOU then).

On top of that a version may have tiers in ``surcharge`` mode (added per kWh to the flat or TOU price), a free
base allowance per cycle and standing charges per day or per month. Tiers and the base allowance count
consumption over the tariff's ``Cycle`` (monthly from a day of the month, or annual from a month and day);
tiers count *all* consumption in the cycle, the allowance included, and the allowance is simply free energy.

Units: quantities are integers in Wh (litres for water), prices integer micros per kWh (per m³), so cost is
``quantity * price`` nanos, exact. Validation returns ``Problem`` values naming the field path as the tariff
file spells it (``versions[0].tou.seasons[1].schedule[2].band``); rating asserts a tariff has none.
"""

from __future__ import annotations

import calendar as gregorian
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import IntEnum, StrEnum

from powergate.domain.calendar import DayType
from powergate.domain.energy import Commodity
from powergate.domain.money import CURRENCIES

MINUTES_PER_DAY = 24 * 60
MAX_VERSIONS = 1000
MAX_SEASONS = 12
MAX_PERIODS_PER_DAY = 96
"""A schedule has at most one period per quarter hour, which is finer than any published TOU table."""
MAX_TIERS = 16
MAX_STANDING_CHARGES = 32
MAX_PRICE_MICROS = 1_000_000_000
"""1,000 yuan per kWh: far above any real price; a larger value is a typo (micros entered as yuan)."""


class Band(IntEnum):
    """TOU band; the value is the meter's rate number (费率 1..4)."""

    SHARP = 1
    PEAK = 2
    FLAT = 3
    VALLEY = 4

    @property
    def label(self) -> str:
        return self.name.lower()


BANDS_BY_LABEL: dict[str, Band] = {band.label: band for band in Band}
BAND_LABELS = ", ".join(BANDS_BY_LABEL)


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem found in data: where (field path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CyclePeriod(StrEnum):
    MONTHLY = "monthly"
    ANNUAL = "annual"


@dataclass(frozen=True, slots=True)
class Cycle:
    """The period over which tiers and the base allowance count consumption.

    Monthly cycles start on ``start_day`` of every month; annual cycles on ``start_month``/``start_day``.
    ``start_day`` is at most 28 so that every month has it.
    """

    period: CyclePeriod = CyclePeriod.MONTHLY
    start_month: int = 1
    start_day: int = 1

    def start_of(self, local_date: date) -> date:
        """The first local date of the cycle that contains ``local_date``."""
        if self.period is CyclePeriod.MONTHLY:
            if local_date.day >= self.start_day:
                return local_date.replace(day=self.start_day)
            year, month = (local_date.year, local_date.month - 1) if local_date.month > 1 else (local_date.year - 1, 12)
            return date(year, month, self.start_day)
        start = date(local_date.year, self.start_month, self.start_day)
        return start if local_date >= start else start.replace(year=local_date.year - 1)

    def next_start(self, cycle_start: date) -> date:
        """The first local date of the cycle after the one starting at ``cycle_start``."""
        if self.period is CyclePeriod.MONTHLY:
            year, month = (cycle_start.year, cycle_start.month + 1)
            if month == 13:
                year, month = year + 1, 1
            return date(year, month, self.start_day)
        return cycle_start.replace(year=cycle_start.year + 1)

    def problems(self, path: str = "cycle") -> list[Problem]:
        found: list[Problem] = []
        if not 1 <= self.start_month <= 12:
            found.append(Problem(f"{path}.start_month", f"{self.start_month} is not a month (1..12)"))
        if not 1 <= self.start_day <= 28:
            found.append(
                Problem(f"{path}.start_day", f"{self.start_day} is not in 1..28 (every month must have the day)")
            )
        return found


@dataclass(frozen=True, slots=True)
class TouPeriod:
    """``band`` from ``start_minute`` to ``end_minute`` (minutes after local midnight; end excluded)."""

    start_minute: int
    end_minute: int
    band: Band


Schedule = tuple[TouPeriod, ...]


@dataclass(frozen=True, slots=True)
class Season:
    """Months (1..12) sharing band schedules; weekend and holiday fall back to the workday schedule."""

    name: str
    months: tuple[int, ...]
    workday: Schedule
    weekend: Schedule | None = None
    holiday: Schedule | None = None

    def schedule_for(self, day_type: DayType) -> Schedule:
        if day_type is DayType.WEEKEND and self.weekend is not None:
            return self.weekend
        if day_type is DayType.HOLIDAY and self.holiday is not None:
            return self.holiday
        return self.workday


SCHEDULE_FIELDS = (
    ("schedule", DayType.WORKDAY),
    ("weekend_schedule", DayType.WEEKEND),
    ("holiday_schedule", DayType.HOLIDAY),
)
"""Tariff-file field of each day type's schedule."""


@dataclass(frozen=True, slots=True)
class Tou:
    """Time-of-use pricing: price per band (micros per kWh) and the seasons' schedules."""

    prices_micros: tuple[tuple[Band, int], ...]
    seasons: tuple[Season, ...]

    def price_of(self, band: Band) -> int | None:
        for priced, price in self.prices_micros:
            if priced is band:
                return price
        return None

    def season_of(self, month: int) -> Season:
        for season in self.seasons:
            if month in season.months:
                return season
        raise AssertionError(f"month {month} is in no season of a validated tariff")


class TierMode(StrEnum):
    PRICE = "price"
    """The tier price is the whole energy price (flat pricing only)."""
    SURCHARGE = "surcharge"
    """The tier price is added per kWh to the flat or TOU price."""


@dataclass(frozen=True, slots=True)
class TierBlock:
    """Consumption in the cycle up to ``up_to_quantity`` (Wh / litres; None for the last block) at a price."""

    up_to_quantity: int | None
    price_micros: int


@dataclass(frozen=True, slots=True)
class Tiers:
    mode: TierMode
    blocks: tuple[TierBlock, ...]

    @property
    def thresholds(self) -> tuple[int, ...]:
        """Upper bounds of every block but the last, increasing."""
        return tuple(block.up_to_quantity for block in self.blocks if block.up_to_quantity is not None)


class ChargePeriod(StrEnum):
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class StandingCharge:
    """A fixed amount per day or per month (a monthly amount is spread exactly over the month's days)."""

    name: str
    amount_micros: int
    per: ChargePeriod


@dataclass(frozen=True, slots=True)
class TariffVersion:
    """Prices in effect from ``effective_from`` (naive site-local wall time) until the next version."""

    effective_from: datetime
    price_micros: int | None = None
    tou: Tou | None = None
    tiers: Tiers | None = None
    base_allowance_quantity: int = 0
    standing_charges: tuple[StandingCharge, ...] = ()

    @property
    def tier_prices_energy(self) -> bool:
        return self.tiers is not None and self.tiers.mode is TierMode.PRICE


@dataclass(frozen=True, slots=True)
class Tariff:
    id: str
    name: str
    commodity: Commodity
    currency: str
    versions: tuple[TariffVersion, ...]
    cycle: Cycle = Cycle()

    def version_index_at(self, local_time: datetime) -> int | None:
        """Index of the version in effect at a naive local wall time; None before the first version."""
        starts = [version.effective_from for version in self.versions]
        index = bisect_right(starts, local_time) - 1
        return index if index >= 0 else None

    def problems(self) -> tuple[Problem, ...]:
        """Every problem of this tariff, each naming its field; empty when the tariff is valid."""
        found: list[Problem] = []
        if not self.id.strip():
            found.append(Problem("id", "empty"))
        if self.currency not in CURRENCIES:
            found.append(Problem("currency", f"unknown currency {self.currency!r}; known: {', '.join(CURRENCIES)}"))
        found.extend(self.cycle.problems())
        if not self.versions:
            found.append(Problem("versions", "a tariff needs at least one version"))
        if len(self.versions) > MAX_VERSIONS:
            found.append(Problem("versions", f"{len(self.versions)} versions; at most {MAX_VERSIONS}"))
        for index, version in enumerate(self.versions):
            path = f"versions[{index}]"
            if index and version.effective_from <= self.versions[index - 1].effective_from:
                found.append(
                    Problem(
                        f"{path}.effective_from",
                        f"{version.effective_from:%Y-%m-%d %H:%M} is not after versions[{index - 1}]'s "
                        f"{self.versions[index - 1].effective_from:%Y-%m-%d %H:%M}",
                    )
                )
            found.extend(version_problems(version, path))
        return tuple(found)


def version_problems(version: TariffVersion, path: str) -> list[Problem]:
    found: list[Problem] = []
    found.extend(_energy_price_problems(version, path))
    if version.tiers is not None:
        found.extend(tier_problems(version.tiers, f"{path}.tiers"))
    if version.base_allowance_quantity < 0:
        found.append(Problem(f"{path}.base_allowance", "must not be negative"))
    found.extend(_standing_charge_problems(version.standing_charges, f"{path}.standing_charges"))
    return found


def _energy_price_problems(version: TariffVersion, path: str) -> list[Problem]:
    found: list[Problem] = []
    given = (("price", version.price_micros is not None), ("tou", version.tou is not None))
    ways = [name for name, present in given if present]
    if version.tier_prices_energy:
        found.extend(
            Problem(
                f"{path}.{name}",
                "tiers in mode 'price' set the whole energy price; remove this or use mode 'surcharge'",
            )
            for name in ways
        )
    elif not ways:
        found.append(Problem(path, "no energy price: give price, tou, or tiers with mode 'price'"))
    elif len(ways) == 2:
        found.append(Problem(f"{path}.tou", "give either a flat price or tou, not both"))
    if version.price_micros is not None:
        found.extend(price_problems(version.price_micros, f"{path}.price"))
    if version.tou is not None:
        found.extend(tou_problems(version.tou, f"{path}.tou"))
    return found


def price_problems(price_micros: int, path: str) -> list[Problem]:
    if price_micros < 0:
        return [Problem(path, f"negative price {price_micros} micros")]
    if price_micros > MAX_PRICE_MICROS:
        return [Problem(path, f"{price_micros} micros is above the limit of {MAX_PRICE_MICROS} (1,000 per unit)")]
    return []


def tou_problems(tou: Tou, path: str) -> list[Problem]:
    found: list[Problem] = []
    seen: set[Band] = set()
    for band, price in tou.prices_micros:
        if band in seen:
            found.append(Problem(f"{path}.prices.{band.label}", "given twice"))
        seen.add(band)
        found.extend(price_problems(price, f"{path}.prices.{band.label}"))
    if not tou.seasons:
        found.append(Problem(f"{path}.seasons", "at least one season is needed (months 1-12)"))
    if len(tou.seasons) > MAX_SEASONS:
        found.append(Problem(f"{path}.seasons", f"{len(tou.seasons)} seasons; at most {MAX_SEASONS}"))
    found.extend(_month_coverage_problems(tou.seasons, f"{path}.seasons"))
    for index, season in enumerate(tou.seasons):
        season_path = f"{path}.seasons[{index}]"
        for field_name, day_type in SCHEDULE_FIELDS:
            schedule = season.schedule_for(day_type)
            if day_type is not DayType.WORKDAY and schedule is season.workday:
                continue
            found.extend(schedule_problems(schedule, f"{season_path}.{field_name}", seen))
    return found


def _month_coverage_problems(seasons: tuple[Season, ...], path: str) -> list[Problem]:
    found: list[Problem] = []
    owner: dict[int, int] = {}
    for index, season in enumerate(seasons):
        for month in season.months:
            if not 1 <= month <= 12:
                found.append(Problem(f"{path}[{index}].months", f"{month} is not a month (1..12)"))
            elif month in owner:
                first = owner[month]
                found.append(
                    Problem(
                        f"{path}[{index}].months",
                        f"month {month} is already in seasons[{first}] {seasons[first].name!r}",
                    )
                )
            else:
                owner[month] = index
    missing = [month for month in range(1, 13) if month not in owner]
    if seasons and missing:
        found.append(Problem(path, f"months {', '.join(map(str, missing))} are in no season"))
    return found


def schedule_problems(schedule: Schedule, path: str, priced: set[Band]) -> list[Problem]:
    """Gaps, overlaps and unpriced bands of one day's schedule; paths index the schedule as given."""
    if not schedule:
        return [Problem(path, "empty; a schedule must cover 00:00-24:00")]
    if len(schedule) > MAX_PERIODS_PER_DAY:
        return [Problem(path, f"{len(schedule)} periods; at most {MAX_PERIODS_PER_DAY}")]
    found: list[Problem] = []
    for index, period in enumerate(schedule):
        if period.band not in priced:
            found.append(Problem(f"{path}[{index}].band", f"band '{period.band.label}' has no price in tou.prices"))
        if not 0 <= period.start_minute < period.end_minute <= MINUTES_PER_DAY:
            found.append(
                Problem(
                    f"{path}[{index}]",
                    f"{hhmm(period.start_minute)}-{hhmm(period.end_minute)} is not a period in 00:00-24:00",
                )
            )
    order = sorted(range(len(schedule)), key=lambda i: (schedule[i].start_minute, schedule[i].end_minute))
    covered_to = 0
    for index in order:
        period = schedule[index]
        if period.start_minute > covered_to:
            found.append(Problem(path, f"gap {hhmm(covered_to)}-{hhmm(period.start_minute)} has no band"))
        elif period.start_minute < covered_to:
            found.append(
                Problem(
                    f"{path}[{index}].start",
                    f"{hhmm(period.start_minute)} overlaps the period before (to {hhmm(covered_to)})",
                )
            )
        covered_to = max(covered_to, period.end_minute)
    if covered_to < MINUTES_PER_DAY:
        found.append(Problem(path, f"gap {hhmm(covered_to)}-24:00 has no band"))
    return found


def tier_problems(tiers: Tiers, path: str) -> list[Problem]:
    found: list[Problem] = []
    if not tiers.blocks:
        return [Problem(f"{path}.blocks", "at least one block is needed")]
    if len(tiers.blocks) > MAX_TIERS:
        found.append(Problem(f"{path}.blocks", f"{len(tiers.blocks)} blocks; at most {MAX_TIERS}"))
    previous = 0
    last = len(tiers.blocks) - 1
    for index, block in enumerate(tiers.blocks):
        block_path = f"{path}.blocks[{index}]"
        found.extend(price_problems(block.price_micros, f"{block_path}.price"))
        if index == last:
            if block.up_to_quantity is not None:
                found.append(Problem(f"{block_path}.up_to", "the last block must have no up_to (it runs without end)"))
            continue
        if block.up_to_quantity is None:
            found.append(Problem(f"{block_path}.up_to", "missing; only the last block runs without end"))
        elif block.up_to_quantity <= previous:
            found.append(
                Problem(
                    f"{block_path}.up_to",
                    f"{block.up_to_quantity} is not above the previous threshold {previous}",
                )
            )
        else:
            previous = block.up_to_quantity
    return found


def _standing_charge_problems(charges: tuple[StandingCharge, ...], path: str) -> list[Problem]:
    found: list[Problem] = []
    if len(charges) > MAX_STANDING_CHARGES:
        found.append(Problem(path, f"{len(charges)} standing charges; at most {MAX_STANDING_CHARGES}"))
    names: set[str] = set()
    for index, charge in enumerate(charges):
        if not charge.name.strip():
            found.append(Problem(f"{path}[{index}].name", "empty"))
        elif charge.name in names:
            found.append(Problem(f"{path}[{index}].name", f"{charge.name!r} is given twice"))
        names.add(charge.name)
        if charge.amount_micros < 0:
            found.append(Problem(f"{path}[{index}].amount", f"negative amount {charge.amount_micros} micros"))
    return found


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# --- standing charges over a span of local dates ---


@dataclass(frozen=True, slots=True)
class StandingChargeLine:
    """A standing charge over ``days`` local dates of one version: ``amount_micros`` in total."""

    name: str
    per: ChargePeriod
    first_date: date
    last_date: date
    days: int
    amount_micros: int
    version: int


MAX_STANDING_SPAN_DAYS = 3700
"""About ten years: a larger span is a programmer error (a quote or a freeze covers days to months)."""


def standing_charge_lines(tariff: Tariff, first_date: date, last_date: date) -> tuple[StandingChargeLine, ...]:
    """Standing charges for the local dates ``first_date..last_date`` inclusive.

    A day belongs to the version in effect at its local 00:00 (days before the first version owe nothing).
    A monthly amount ``A`` is spread over the ``n`` days of each month so that day ``k`` owes
    ``A*k//n - A*(k-1)//n``: the days of any month sum to exactly ``A``, so daily freezes and one quote over
    the same dates agree to the micro.
    """
    assert first_date <= last_date + timedelta(days=1), "span ends before it starts"
    assert (last_date - first_date).days <= MAX_STANDING_SPAN_DAYS, "standing charge span too long"
    lines: dict[tuple[int, str], StandingChargeLine] = {}
    day = first_date
    while day <= last_date:
        index = tariff.version_index_at(datetime.combine(day, time()))
        charges = tariff.versions[index].standing_charges if index is not None else ()
        for charge in charges:
            assert index is not None
            line = lines.get((index, charge.name)) or StandingChargeLine(charge.name, charge.per, day, day, 0, 0, index)
            lines[(index, charge.name)] = StandingChargeLine(
                charge.name,
                charge.per,
                line.first_date,
                day,
                line.days + 1,
                line.amount_micros + daily_share_micros(charge, day),
                index,
            )
        day += timedelta(days=1)
    return tuple(lines[key] for key in sorted(lines))


def daily_share_micros(charge: StandingCharge, day: date) -> int:
    """What ``charge`` costs on one local date (a monthly amount spread exactly over the month)."""
    if charge.per is ChargePeriod.DAY:
        return charge.amount_micros
    days_in_month = gregorian.monthrange(day.year, day.month)[1]
    amount = charge.amount_micros
    return amount * day.day // days_in_month - amount * (day.day - 1) // days_in_month
