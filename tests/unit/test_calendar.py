"""Day types: China's statutory holidays and make-up workdays (调休), weekends, and admin overrides."""

from __future__ import annotations

from datetime import date

import pytest

from powergate.domain.calendar import DayType, SiteCalendar, china_statutory_year

CHINA = SiteCalendar.china()


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2025, 1, 26), DayType.WORKDAY),  # Sunday, make-up workday before the Spring Festival
        (date(2025, 2, 8), DayType.WORKDAY),  # Saturday, make-up workday
        (date(2025, 9, 28), DayType.WORKDAY),  # Sunday, make-up workday before National Day
        (date(2025, 1, 29), DayType.HOLIDAY),  # Spring Festival
        (date(2025, 2, 4), DayType.HOLIDAY),  # Tuesday off in lieu of the 8 February Saturday
        (date(2025, 10, 1), DayType.HOLIDAY),  # National Day
        (date(2025, 5, 31), DayType.HOLIDAY),  # Dragon Boat Festival on a Saturday: a holiday
        (date(2025, 3, 1), DayType.WEEKEND),  # an ordinary Saturday
        (date(2025, 3, 3), DayType.WORKDAY),  # an ordinary Monday
        (date(2024, 2, 4), DayType.WORKDAY),  # Sunday, make-up workday of 2024
    ],
)
def test_china_day_types(day: date, expected: DayType) -> None:
    assert CHINA.day_type(day) is expected


def test_the_make_up_workdays_of_a_year_are_only_that_years() -> None:
    _, workdays = china_statutory_year(2025)
    assert workdays == {date(2025, 1, 26), date(2025, 2, 8), date(2025, 4, 27), date(2025, 9, 28), date(2025, 10, 11)}


def test_an_admin_override_wins_over_the_statutory_calendar_and_weekends() -> None:
    calendar = SiteCalendar.china({date(2025, 1, 26): DayType.HOLIDAY, date(2025, 3, 4): DayType.WEEKEND})
    assert calendar.day_type(date(2025, 1, 26)) is DayType.HOLIDAY
    assert calendar.day_type(date(2025, 3, 4)) is DayType.WEEKEND
    assert calendar.day_type(date(2025, 1, 29)) is DayType.HOLIDAY


def test_a_weekends_only_calendar_knows_no_holidays_but_takes_overrides() -> None:
    calendar = SiteCalendar.weekends_only({date(2025, 12, 25): DayType.HOLIDAY})
    assert calendar.day_type(date(2025, 1, 1)) is DayType.WORKDAY
    assert calendar.day_type(date(2025, 1, 26)) is DayType.WEEKEND
    assert calendar.day_type(date(2025, 12, 25)) is DayType.HOLIDAY


def test_a_month_without_statutory_dates_follows_the_weekdays() -> None:
    for day in (date(2090, 3, d) for d in range(1, 32)):
        expected = DayType.WEEKEND if day.weekday() >= 5 else DayType.WORKDAY
        assert CHINA.day_type(day) is expected
