"""TOU tables over DL/T 645-2007: golden bytes for the 0401xxxx / 0403xxxx layouts, the codec round trip and the
table builder (Hypothesis), and the limits a meter model sets."""

from __future__ import annotations

import datetime as dt
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergate.domain.calendar import DayType, SiteCalendar
from powergate.domain.tariff import Band, Season, Tou, TouPeriod
from powergate.domain.tou_table import (
    ALL_WORKDAYS,
    SATURDAY_SUNDAY_OFF,
    MeterTou,
    MeterTouLimits,
    Period,
    SpecialDay,
    Zone,
    build_meter_tou,
    from_plain,
    to_plain,
)
from powergate.protocols.dlt645 import DecodeError, Function, Value, decode_data, encode_data, write_request
from powergate.protocols.dlt645.control import Credentials
from powergate.protocols.dlt645.frame import decode_frame, encode_frame
from powergate.protocols.dlt645.messages import tou_from_values, tou_writes

SUMMER = dt.date(2026, 7, 15)


@pytest.mark.parametrize(
    ("di", "value", "data"),
    [
        # MMDDNN, least significant byte first: table 02, day 01, month 07
        (0x04010000, ({"month": 1, "day": 1, "table": 1}, {"month": 7, "day": 1, "table": 2}), "010101020107"),
        # hhmmNN: 00:00 rate 4 (valley), 08:30 rate 3 (flat)
        (0x04010001, ({"hour": 0, "minute": 0, "rate": 4}, {"hour": 8, "minute": 30, "rate": 3}), "040000033008"),
        # YYMMDDNN: 2026-10-01 uses day table 3
        (0x04030001, {"year": 26, "month": 10, "day": 1, "table": 3}, "03011026"),
        (0x04000801, 0b0111110, "3E"),
        (0x04000205, 12, "1200"),
    ],
)
def test_tou_values_have_the_standards_byte_layout(di: int, value: object, data: str) -> None:
    assert encode_data(di, value).hex().upper() == data  # type: ignore[arg-type]
    assert decode_data(di, bytes.fromhex(data)) == value


def test_a_tou_write_frame_carries_the_di_low_byte_first_and_every_byte_plus_33h() -> None:
    credentials = Credentials(2, "000000", "00000000")
    frame = write_request(
        "000000000001", 0x04010000, encode_data(0x04010000, ({"month": 1, "day": 1, "table": 1},)), credentials
    )
    wire = encode_frame(frame, preamble=0)
    assert wire.hex(" ").upper() == (
        "68 01 00 00 00 00 00 68 14 0F 33 33 34 37 35 33 33 33 33 33 33 33 34 34 34 " + wire[-2:].hex(" ").upper()
    )
    decoded = decode_frame(wire)
    assert not isinstance(decoded, DecodeError) and decoded.function is Function.WRITE


@pytest.mark.parametrize(
    ("di", "data", "field"),
    [
        (0x04010000, "010113", "month"),  # month 13
        (0x04010000, "090101", "table"),  # day table 9
        (0x04010001, "016000", "minute"),  # 00:60
        (0x04010001, "00000000", "whole number"),  # not whole entries
    ],
)
def test_a_malformed_tou_value_is_a_decode_error_naming_the_field(di: int, data: str, field: str) -> None:
    error = decode_data(di, bytes.fromhex(data))
    assert hasattr(error, "field") and field in str(error), error


# -- strategies ------------------------------------------------------------------------------------------------

starts = st.lists(st.integers(1, 24 * 60 - 1), max_size=13, unique=True).map(lambda s: [0, *sorted(s)])


@st.composite
def day_tables(draw: st.DrawFn) -> tuple[Period, ...]:
    minutes = draw(starts)
    rates = draw(st.lists(st.integers(1, 4), min_size=len(minutes), max_size=len(minutes)))
    periods: list[Period] = []
    for minute, rate in zip(minutes, rates, strict=True):
        if not periods or periods[-1].rate != rate:
            periods.append(Period(minute, rate))
    return tuple(periods)


@st.composite
def meter_tous(draw: st.DrawFn) -> MeterTou:
    tables = tuple(draw(st.lists(day_tables(), min_size=1, max_size=8)))
    table_no = st.integers(1, len(tables))
    zone_days = draw(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 28)), min_size=1, max_size=14, unique=True))
    zones = tuple(Zone(m, d, draw(table_no)) for m, d in sorted(zone_days))
    days = draw(st.lists(st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)), max_size=40, unique=True))
    special = tuple(SpecialDay(day, draw(table_no)) for day in days)
    return MeterTou(zones, tables, draw(st.integers(0, ALL_WORKDAYS)), draw(table_no), special)


@given(meter_tous())
@settings(max_examples=150, deadline=None)
def test_tou_tables_round_trip_through_the_writes_and_their_bytes(tou: MeterTou) -> None:
    values: dict[int, Value] = {}
    for di, value in tou_writes(tou):
        payload = encode_data(di, value)
        # 14 periods make 42 bytes (L = 54 with the DI and credentials): above the 50 the standard gives for a
        # write, yet what meters take for 04010001..08; MeterTouLimits(periods=12) keeps L at 48 for strict ones
        assert len(payload) <= 3 * 14
        decoded = decode_data(di, payload)
        assert not isinstance(decoded, DecodeError), decoded
        values[di] = decoded
    assert tou_from_values(values) == tou
    assert from_plain(to_plain(tou)) == tou


def test_values_missing_a_day_table_are_refused_not_guessed() -> None:
    tou = MeterTou((Zone(1, 1, 1), Zone(7, 1, 2)), ((Period(0, 3),), (Period(0, 4),)))
    values = dict(tou_writes(tou))
    del values[0x04010002]
    assert "04010002" in str(tou_from_values(values))


# -- the builder: the meter picks the tariff's band at every minute ----------------------------------------------


@st.composite
def schedules(draw: st.DrawFn, max_periods: int = 6) -> tuple[TouPeriod, ...]:
    minutes = draw(st.lists(st.sampled_from(range(0, 24 * 60, 30)), max_size=max_periods - 1, unique=True))
    bounds = [0, *sorted(m for m in minutes if m), 24 * 60]
    return tuple(TouPeriod(start, end, Band(draw(st.integers(1, 4)))) for start, end in pairwise(bounds))


@st.composite
def tous(draw: st.DrawFn) -> Tou:
    season_of_month = draw(st.lists(st.integers(0, 2), min_size=12, max_size=12))
    seasons = []
    for index in sorted(set(season_of_month)):
        months = tuple(m + 1 for m, s in enumerate(season_of_month) if s == index)
        weekend = draw(st.none() | schedules())
        holiday = draw(st.none() | schedules())
        seasons.append(Season(f"s{index}", months, draw(schedules()), weekend, holiday))
    prices = tuple((band, 100_000 * int(band)) for band in Band)
    return Tou(prices, tuple(seasons))


overrides = st.dictionaries(
    st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)), st.sampled_from(list(DayType)), max_size=20
)


@given(tous(), overrides, st.dates(dt.date(2026, 1, 1), dt.date(2026, 12, 31)))
@settings(max_examples=60, deadline=None)
def test_the_built_tables_give_the_tariffs_band_at_every_minute_of_the_horizon(
    tou: Tou, extra: dict[dt.date, DayType], start: dt.date
) -> None:
    calendar = SiteCalendar.china(extra)
    built = build_meter_tou(tou, calendar.day_type, start, 366)
    if isinstance(built, list):  # more distinct schedules than 8 day tables, or too many special days
        assert all(p.path in ("day_tables", "special_days") for p in built), built
        return
    for offset in range(366):
        day = start + dt.timedelta(days=offset)
        schedule = tou.season_of(day.month).schedule_for(calendar.day_type(day))
        for period in schedule:
            for minute in (period.start_minute, period.end_minute - 1):
                assert built.rate_at(day, minute) == int(period.band), (day, minute)


def test_a_commercial_tariff_uses_rest_days_and_special_days_for_holidays_and_make_up_workdays() -> None:
    workday = (TouPeriod(0, 480, Band.VALLEY), TouPeriod(480, 1320, Band.PEAK), TouPeriod(1320, 1440, Band.VALLEY))
    weekend = (TouPeriod(0, 1440, Band.FLAT),)
    tou = Tou(
        ((Band.PEAK, 1), (Band.FLAT, 1), (Band.VALLEY, 1)),
        (Season("all", tuple(range(1, 13)), workday, weekend, weekend),),
    )
    built = build_meter_tou(tou, SiteCalendar.china().day_type, dt.date(2026, 1, 1), 365)
    assert isinstance(built, MeterTou)
    assert built.zones == (Zone(1, 1, 1),) and len(built.day_tables) == 2
    assert (built.rest_days, built.rest_table) == (SATURDAY_SUNDAY_OFF, 2)
    special = {s.day: s.table for s in built.special_days}
    assert special[dt.date(2026, 10, 1)] == 2, "National Day (a Thursday) uses the weekend table"
    assert special[dt.date(2026, 1, 4)] == 1, "a make-up workday (Sunday 4 January 2026) uses the workday table"
    assert dt.date(2026, 3, 7) not in special, "a plain Saturday needs no special day"


def test_more_periods_or_tables_than_the_meter_holds_are_problems_naming_the_limit() -> None:
    hours = [TouPeriod(i * 60, (i + 1) * 60, Band(1 + i % 2)) for i in range(14)]
    fifteen = (*hours, TouPeriod(14 * 60, 1440, Band.VALLEY))
    tou = Tou(((Band.SHARP, 1), (Band.PEAK, 1), (Band.VALLEY, 1)), (Season("all", tuple(range(1, 13)), fifteen),))
    problems = build_meter_tou(tou, SiteCalendar.china().day_type, SUMMER, 30)
    assert isinstance(problems, list) and "15 periods; the meter holds 14" in str(problems[0])
    small = MeterTouLimits(day_tables=2)
    seasons = tuple(
        Season(f"m{m}", (m,), (TouPeriod(0, 60 * m, Band.PEAK), TouPeriod(60 * m, 1440, Band.VALLEY)))
        for m in range(1, 13)
    )
    problems = build_meter_tou(
        Tou(((Band.PEAK, 1), (Band.VALLEY, 1)), seasons), lambda d: DayType.WORKDAY, SUMMER, 30, small
    )
    assert isinstance(problems, list) and "12 distinct day schedules; the meter holds 2" in str(problems[0])
