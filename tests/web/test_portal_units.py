"""The portal's pure pieces, as properties: amounts typed by a tenant, kWh shown, usage buckets.

No database: these are the rules the pages rely on, checked over many generated cases (Hypothesis).
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from hypothesis import example, given
from hypothesis import strategies as st

from powergate.services import portal
from powergate.services.portal import RechargeOptions, Refused, parse_amount
from powergate.web.portal._common import kwh

YUAN = 1_000_000
OPEN_RANGE = RechargeOptions(0, 10_000, None, (), ("sandbox",), True)
"""Any amount from 0.01 yuan, no hoarding limit."""


@given(st.integers(min_value=1, max_value=portal.MAX_CUSTOM_MICROS // 10_000))
def test_an_amount_in_yuan_and_fen_is_parsed_to_exact_micros(fen: int) -> None:
    assert parse_amount(f"{fen // 100}.{fen % 100:02d}", OPEN_RANGE) == fen * 10_000
    if fen % 100 == 0:
        assert parse_amount(str(fen // 100), OPEN_RANGE) == fen * 10_000


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=9))
def test_an_amount_finer_than_a_fen_is_refused_naming_the_amount(yuan: int, extra: int) -> None:
    refused = parse_amount(f"{yuan}.00{extra}", OPEN_RANGE)
    assert isinstance(refused, Refused) and refused.field == "amount"


@given(st.integers(min_value=1, max_value=2_000), st.integers(min_value=0, max_value=3_000), st.data())
def test_the_sites_minimum_and_hoarding_room_bound_every_accepted_amount(
    min_yuan: int, room_yuan: int, data: st.DataObject
) -> None:
    options = RechargeOptions(0, min_yuan * YUAN, room_yuan * YUAN, (), ("sandbox",), True)
    fen = data.draw(st.integers(min_value=1, max_value=400_000))
    parsed = parse_amount(f"{fen // 100}.{fen % 100:02d}", options)
    allowed = min_yuan * YUAN <= fen * 10_000 <= room_yuan * YUAN
    assert (parsed == fen * 10_000) if allowed else isinstance(parsed, Refused)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_kwh_shows_watt_hours_with_two_decimals_rounded_half_up_like_decimal(energy_wh: int) -> None:
    expected = (Decimal(abs(energy_wh)) / 1000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    sign = "-" if energy_wh < 0 and expected else ""
    assert kwh(energy_wh) == f"{sign}{expected:,.2f}"


ZONES = st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
DAYS = st.dates(min_value=dt.date(2024, 1, 1), max_value=dt.date(2030, 12, 31))


@example("Australia/Lord_Howe", dt.date(2026, 10, 4), [(23 * 3600 + 1800, 7)])  # a 23.5-hour day
@example("Europe/Berlin", dt.date(2026, 10, 25), [(25 * 3600, 5)])  # a 25-hour day: its last second counts
@given(ZONES, DAYS, st.lists(st.tuples(st.integers(min_value=1, max_value=25 * 3600), st.integers(0, 10**6))))
def test_hourly_buckets_partition_the_local_day_so_the_curve_adds_up_to_the_day(
    zone_name: str, day: dt.date, offsets: list[tuple[int, int]]
) -> None:
    zone = ZoneInfo(zone_name)
    start = portal.local_midnight(day, zone)
    end = portal.local_midnight(day + dt.timedelta(days=1), zone)
    buckets = portal.local_buckets(start, end, "hour", zone)
    assert buckets[0][1] == start and buckets[-1][2] == end
    assert all(a[2] == b[1] for a, b in itertools.pairwise(buckets)), "no gap, no overlap"
    assert 23 <= len(buckets) <= 25  # DST days are 23 or 25 hours long (Lord Howe: 23.5 / 24.5)
    assert all(b[2] - b[1] <= dt.timedelta(hours=1) for b in buckets)
    events = [(start + dt.timedelta(seconds=s), wh) for s, wh in offsets]
    inside = sum(wh for at, wh in events if start < at <= end)
    points = portal.fill_buckets(buckets, events, [(at, wh) for at, wh in events])
    assert sum(p.energy_wh for p in points) == inside == sum(p.cost_micros for p in points)


@given(ZONES, DAYS)
def test_daily_buckets_of_a_month_start_at_local_midnights(zone_name: str, day: dt.date) -> None:
    zone = ZoneInfo(zone_name)
    first = day.replace(day=1)
    start = portal.local_midnight(first, zone)
    end = portal.local_midnight(day + dt.timedelta(days=1), zone)
    buckets = portal.local_buckets(start, end, "day", zone)
    assert len(buckets) == day.day
    assert [b[1].astimezone(zone).time() for b in buckets] == [dt.time(0)] * day.day
    assert buckets[-1][0] == f"{day:%m-%d}"
