"""A meter's TOU tables, as a DL/T 645-2007 meter holds them, built from a tariff's TOU schedule.

A meter does not know seasons and day types the way a tariff does. It holds:

- a **time-zone table** (年时区表): up to 14 entries ``(month, day) -> day-table number``; an entry applies from
  its date until the next entry's date (the last one wraps round the year end);
- up to 8 **day tables** (日时段表), each up to 14 periods ``start hh:mm -> rate`` (rates 1..4 = sharp, peak,
  flat, valley); a period runs until the next one starts, the last until midnight;
- **rest days** (周休日): a weekly pattern (a bit per weekday, 1 = workday) and the day table used on them;
- **special days** (公共假日): up to 254 dated entries ``date -> day-table number`` that win over both.

``build_meter_tou`` turns a tariff version's ``Tou`` plus a site calendar into that form: one day table per
distinct band schedule, one zone per run of months with the same workday schedule, Saturday and Sunday as rest
days when every season shares one weekend schedule, and a special day for every date of the horizon on which
the meter's rule would otherwise pick another schedule than the tariff (statutory holidays, make-up workdays
调休, admin overrides, per-season weekends). ``MeterTou.table_for`` / ``rate_at`` are the meter's own rule;
the invariant, checked by Hypothesis, is that over the horizon the meter picks exactly the band the tariff
does at every minute. Pure: no clock, no I/O.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from powergate.domain.calendar import DayType
from powergate.domain.tariff import MINUTES_PER_DAY, Problem, Schedule, Tou

DayTypeOf = Callable[[dt.date], DayType]

ALL_WORKDAYS = 0b111_1111
"""Rest-day pattern with no rest day (bit 0 Sunday .. bit 6 Saturday; 1 = workday)."""
SATURDAY_SUNDAY_OFF = 0b011_1110
MAX_HORIZON_DAYS = 732


@dataclass(frozen=True, slots=True)
class MeterTouLimits:
    """What a meter model holds (DL/T 645-2007 maxima by default; ``MeterTou`` is checked against them)."""

    zones: int = 14
    day_tables: int = 8
    periods: int = 14
    special_days: int = 254

    def __post_init__(self) -> None:
        assert 1 <= self.zones <= 14 and 1 <= self.day_tables <= 8 and 1 <= self.periods <= 14, self
        assert 0 <= self.special_days <= 254, self


@dataclass(frozen=True, slots=True)
class Zone:
    month: int
    day: int
    table: int


@dataclass(frozen=True, slots=True)
class Period:
    start_minute: int
    rate: int
    """1 sharp, 2 peak, 3 flat, 4 valley (``domain.tariff.Band`` values)."""


@dataclass(frozen=True, slots=True)
class SpecialDay:
    day: dt.date
    table: int


@dataclass(frozen=True, slots=True)
class MeterTou:
    """The TOU tables of one meter. Day table ``n`` is ``day_tables[n - 1]``."""

    zones: tuple[Zone, ...]
    day_tables: tuple[tuple[Period, ...], ...]
    rest_days: int = ALL_WORKDAYS
    """Bit 0 Sunday .. bit 6 Saturday; a 0 bit is a rest day (周休日特征字)."""
    rest_table: int = 1
    special_days: tuple[SpecialDay, ...] = ()
    _special: dict[dt.date, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _zone_starts: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False, compare=False)
    _period_starts: list[list[int]] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = structure_problems(self)
        assert not problems, problems
        object.__setattr__(self, "_special", {s.day: s.table for s in self.special_days})
        object.__setattr__(self, "_zone_starts", [(zone.month, zone.day) for zone in self.zones])
        object.__setattr__(self, "_period_starts", [[p.start_minute for p in table] for table in self.day_tables])

    def table_for(self, local_date: dt.date) -> int:
        """The day table the meter uses on ``local_date``: special day, else rest day, else its zone's."""
        special = self._special.get(local_date)
        if special is not None:
            return special
        weekday = local_date.isoweekday() % 7  # 0 = Sunday, as the standard counts
        if not self.rest_days >> weekday & 1:
            return self.rest_table
        index = bisect_right(self._zone_starts, (local_date.month, local_date.day)) - 1
        return self.zones[index].table  # -1: before the first entry, the last one still runs

    def rate_at(self, local_date: dt.date, minute_of_day: int) -> int:
        table = self.table_for(local_date) - 1
        index = bisect_right(self._period_starts[table], minute_of_day) - 1
        return self.day_tables[table][index].rate


def structure_problems(tou: MeterTou, limits: MeterTouLimits | None = None) -> list[Problem]:
    """What is inconsistent in a table (or beyond ``limits``)."""
    return parts_problems(tou.zones, tou.day_tables, tou.rest_days, tou.rest_table, tou.special_days, limits)


def parts_problems(
    zones: tuple[Zone, ...],
    day_tables: tuple[tuple[Period, ...], ...],
    rest_days: int,
    rest_table: int,
    special_days: tuple[SpecialDay, ...],
    limits: MeterTouLimits | None = None,
) -> list[Problem]:
    """Zones valid and in date order, day tables from 00:00 in ascending order with rates 1..4, every table
    used present, everything within ``limits`` (DL/T 645-2007 maxima by default)."""
    found: list[Problem] = []
    limits = limits or MeterTouLimits()
    count = len(day_tables)
    if not 1 <= count <= limits.day_tables:
        found.append(Problem("day_tables", f"{count} day tables; the meter holds 1..{limits.day_tables}"))
    if not 1 <= len(zones) <= limits.zones:
        found.append(Problem("zones", f"{len(zones)} time zones; the meter holds 1..{limits.zones}"))
    keys = [(z.month, z.day) for z in zones]
    if keys != sorted(set(keys)):
        found.append(Problem("zones", "zone start dates must be distinct and in date order"))
    found.extend(
        Problem("zones", f"{z.month:02d}-{z.day:02d} is not a date")
        for z in zones
        if not _valid_month_day(z.month, z.day)
    )
    if len(special_days) > limits.special_days:
        found.append(
            Problem("special_days", f"{len(special_days)} special days; the meter holds {limits.special_days}")
        )
    if len({s.day for s in special_days}) != len(special_days):
        found.append(Problem("special_days", "a date is given twice"))
    if not 0 <= rest_days <= ALL_WORKDAYS:
        found.append(Problem("rest_days", f"{rest_days} is not a 7-bit weekday pattern"))
    used = [z.table for z in zones] + [s.table for s in special_days] + [rest_table]
    found.extend(
        Problem("day_tables", f"day table {t} is used but not given") for t in sorted(set(used)) if not 1 <= t <= count
    )
    for number, periods in enumerate(day_tables, start=1):
        found.extend(_periods_problems(number, periods, limits))
    return found


def _periods_problems(number: int, periods: tuple[Period, ...], limits: MeterTouLimits) -> list[Problem]:
    where = f"day_tables[{number}]"
    starts = [p.start_minute for p in periods]
    if not 1 <= len(periods) <= limits.periods:
        return [Problem(where, f"{len(periods)} periods; the meter holds 1..{limits.periods} a day")]
    if starts[0] != 0 or starts != sorted(set(starts)) or starts[-1] >= MINUTES_PER_DAY:
        return [Problem(where, "periods must start at 00:00 and be in ascending time order")]
    return [Problem(where, f"rate {p.rate} is not 1..4") for p in periods if not 1 <= p.rate <= 4]


def _valid_month_day(month: int, day: int) -> bool:
    try:
        dt.date(2000, month, day)  # a leap year: 02-29 is a valid zone start
    except ValueError:
        return False
    return True


# -- building from a tariff ----------------------------------------------------------------------------------


def build_meter_tou(
    tou: Tou, day_type: DayTypeOf, start: dt.date, days: int = 366, limits: MeterTouLimits | None = None
) -> MeterTou | list[Problem]:
    """The meter tables that reproduce ``tou`` under the site calendar from ``start`` for ``days`` days, or the
    problems (each naming what overflows which limit) when this meter model cannot hold it."""
    assert 1 <= days <= MAX_HORIZON_DAYS, days
    limits = limits or MeterTouLimits()
    tables: dict[tuple[Period, ...], int] = {}

    def number(schedule: Schedule) -> int:
        periods = _periods(schedule)
        return tables.setdefault(periods, len(tables) + 1)

    by_month = {month: number(tou.season_of(month).workday) for month in range(1, 13)}
    zones = tuple(Zone(m, 1, t) for m, t in sorted(by_month.items()) if m == 1 or by_month[m - 1] != t)
    weekend = {number(season.schedule_for(DayType.WEEKEND)) for season in tou.seasons}
    rest_days, rest_table = ALL_WORKDAYS, 1
    if len(weekend) == 1 and weekend != {by_month[m] for m in range(1, 13)}:
        rest_days, rest_table = SATURDAY_SUNDAY_OFF, next(iter(weekend))
    for season in tou.seasons:
        number(season.schedule_for(DayType.HOLIDAY))
    problems = _table_problems(tables, zones, limits)
    if problems:
        return problems
    base = MeterTou(zones, tuple(tables), rest_days, rest_table)
    special: list[SpecialDay] = []
    for offset in range(days):
        local_date = start + dt.timedelta(days=offset)
        wanted = number(tou.season_of(local_date.month).schedule_for(day_type(local_date)))
        if base.table_for(local_date) != wanted:
            special.append(SpecialDay(local_date, wanted))
    if len(special) > limits.special_days:
        return [
            Problem(
                "special_days",
                f"{len(special)} dates in {days} days need a special day; the meter holds {limits.special_days}: "
                "push a shorter horizon",
            )
        ]
    return MeterTou(zones, tuple(tables), rest_days, rest_table, tuple(special))


def _table_problems(
    tables: dict[tuple[Period, ...], int], zones: tuple[Zone, ...], limits: MeterTouLimits
) -> list[Problem]:
    found: list[Problem] = []
    if len(tables) > limits.day_tables:
        found.append(
            Problem(
                "day_tables",
                f"the tariff has {len(tables)} distinct day schedules; the meter holds {limits.day_tables}",
            )
        )
    if len(zones) > limits.zones:
        found.append(Problem("zones", f"the tariff needs {len(zones)} time zones; the meter holds {limits.zones}"))
    for periods, table in tables.items():
        if len(periods) > limits.periods:
            found.append(
                Problem(
                    f"day_tables[{table}]",
                    f"a day schedule has {len(periods)} periods; the meter holds {limits.periods} a day",
                )
            )
    return found


def _periods(schedule: Schedule) -> tuple[Period, ...]:
    """A band schedule as meter periods, adjacent periods of one band merged."""
    periods: list[Period] = []
    for part in sorted(schedule, key=lambda p: p.start_minute):
        if periods and periods[-1].rate == int(part.band):
            continue
        periods.append(Period(part.start_minute, int(part.band)))
    return tuple(periods)


# -- plain data (for the command queue's JSON parameters) ----------------------------------------------------


def to_plain(tou: MeterTou) -> dict[str, object]:
    """The tables as JSON-friendly data; ``from_plain`` reads it back equal."""
    return {
        "zones": [[z.month, z.day, z.table] for z in tou.zones],
        "day_tables": [[[p.start_minute, p.rate] for p in table] for table in tou.day_tables],
        "rest_days": tou.rest_days,
        "rest_table": tou.rest_table,
        "special_days": [[s.day.isoformat(), s.table] for s in tou.special_days],
    }


def from_plain(data: object) -> MeterTou | list[Problem]:
    """Tables from ``to_plain`` data; the problems when the data is malformed or inconsistent."""
    try:
        assert isinstance(data, dict)
        zones = tuple(Zone(int(m), int(d), int(t)) for m, d, t in data["zones"])
        tables = tuple(tuple(Period(int(s), int(r)) for s, r in table) for table in data["day_tables"])
        special = tuple(SpecialDay(dt.date.fromisoformat(str(d)), int(t)) for d, t in data["special_days"])
        rest_days, rest_table = int(data["rest_days"]), int(data["rest_table"])
    except (AssertionError, KeyError, TypeError, ValueError) as error:
        return [Problem("tou", f"not a TOU table: {error!r}")]
    problems = parts_problems(zones, tables, rest_days, rest_table, special)
    return problems or MeterTou(zones, tables, rest_days, rest_table, special)
