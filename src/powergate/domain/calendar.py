"""Day types of a site's calendar: workday, weekend or holiday, for choosing a TOU schedule.

China moves working days around its statutory holidays (调休): a Sunday may be a workday and a Monday a day
off. The ``holidays`` package knows both sides for the years the State Council has announced:
``country_holidays('CN')`` gives the days off and its ``weekend_workdays`` attribute the make-up workdays. An
admin's per-site override (``date -> DayType``) wins over both, for years not yet announced or local rules.

Precedence, first match wins: override, make-up workday, statutory holiday (a holiday on a Saturday is a
holiday), Saturday or Sunday, otherwise workday.

Invariants: ``day_type`` is a pure function of the date (the per-year sets are computed once and cached, which
changes no answer); the package's ``weekend_workdays`` set can hold dates of other years than those asked for,
so only the asked year's dates are taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

import holidays

MAX_CACHED_YEARS = 200
"""Bound on the per-year cache (a calendar is asked about a handful of years in practice)."""


class DayType(StrEnum):
    """Which TOU schedule a local date uses."""

    WORKDAY = "workday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


YearExceptions = tuple[frozenset[date], frozenset[date]]
"""(days off, make-up workdays) of one year."""


def china_statutory_year(year: int) -> YearExceptions:
    """China's statutory days off and make-up workdays (调休) of ``year`` from the ``holidays`` package."""
    calendar = holidays.country_holidays("CN", years=year)
    days_off = frozenset(day for day in calendar if day.year == year)
    workdays = frozenset(day for day in calendar.weekend_workdays if day.year == year)
    return days_off, workdays


def no_statutory_year(year: int) -> YearExceptions:
    """A calendar with weekends only (and whatever the overrides say)."""
    return frozenset(), frozenset()


@dataclass(frozen=True, eq=False)
class SiteCalendar:
    """Answers ``day_type(local_date)`` for one site.

    ``statutory`` gives a year's (days off, make-up workdays); ``overrides`` are the admin's per-date choices.
    Compared and hashed by identity: a calendar is built once per site and shared by its meters.
    """

    statutory: Callable[[int], YearExceptions] = china_statutory_year
    overrides: Mapping[date, DayType] = field(default_factory=dict)
    _years: dict[int, dict[date, DayType]] = field(default_factory=dict, init=False, repr=False)

    def day_type(self, local_date: date) -> DayType:
        exceptions = self._years.get(local_date.year)
        if exceptions is None:
            exceptions = self._exceptions_of(local_date.year)
        found = exceptions.get(local_date)
        if found is not None:
            return found
        return DayType.WEEKEND if local_date.weekday() >= 5 else DayType.WORKDAY

    @classmethod
    def china(cls, overrides: Mapping[date, DayType] | None = None) -> SiteCalendar:
        """China's statutory days off and make-up workdays (调休), plus the admin's overrides."""
        return cls(china_statutory_year, dict(overrides or {}))

    @classmethod
    def weekends_only(cls, overrides: Mapping[date, DayType] | None = None) -> SiteCalendar:
        """Saturdays and Sundays are weekends, nothing else is special unless overridden."""
        return cls(no_statutory_year, dict(overrides or {}))

    def _exceptions_of(self, year: int) -> dict[date, DayType]:
        """Every date of ``year`` whose day type is not the plain weekday rule, precedence already applied."""
        days_off, workdays = self.statutory(year)
        exceptions: dict[date, DayType] = dict.fromkeys(days_off, DayType.HOLIDAY)
        exceptions.update(dict.fromkeys(workdays, DayType.WORKDAY))
        exceptions.update((day, kind) for day, kind in self.overrides.items() if day.year == year)
        if len(self._years) >= MAX_CACHED_YEARS:
            self._years.clear()
        self._years[year] = exceptions
        return exceptions
