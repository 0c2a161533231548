"""Rating worked examples: tiers, TOU with and without band registers, rollover, replacement, day types."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.rating import (
    COMPONENT_BASE_ALLOWANCE,
    COMPONENT_ENERGY,
    COMPONENT_TIER_ENERGY,
    COMPONENT_TIER_SURCHARGE,
    QUANTITY_COMPONENTS,
    Charge,
    ChargeLine,
    Quarantined,
    Rated,
    RatingContext,
    RatingOutcome,
    RatingState,
    Reading,
    ReadingKind,
    Skipped,
    largest_remainder,
    rate,
)
from powergate.domain.tariff import (
    Band,
    Cycle,
    CyclePeriod,
    Season,
    Tariff,
    TariffVersion,
    TierBlock,
    TierMode,
    Tiers,
    Tou,
    TouPeriod,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
CALENDAR = SiteCalendar.china()
KWH = 1000
YUAN = 1_000_000


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def tariff(*versions: TariffVersion, cycle: Cycle | None = None) -> Tariff:
    return Tariff("t", "test", Commodity.ELECTRICITY, "CNY", versions, cycle or Cycle())


def version(**fields: object) -> TariffVersion:
    return TariffVersion(datetime(2020, 1, 1), **fields)  # type: ignore[arg-type]


def context(t: Tariff, **limits: int) -> RatingContext:
    return RatingContext(t, CALENDAR, SHANGHAI, **limits)


def run(ctx: RatingContext, readings: Sequence[Reading], state: RatingState | None = None) -> list[RatingOutcome]:
    state = state or RatingState(readings[0].meter_id)
    outcomes = []
    for reading in readings:
        outcome = rate(state, reading, ctx)
        outcomes.append(outcome)
        state = outcome.state
    return outcomes


def charges(outcomes: Sequence[RatingOutcome]) -> list[Charge]:
    return [o.charge for o in outcomes if isinstance(o, Rated)]


def reading(
    n: int, at: datetime, total_kwh_centi: int, bands_centi: Sequence[int] | None = None, **kw: object
) -> Reading:
    """A reading with registers in 0.01 kWh, as meters show them."""
    bands = tuple(b * 10 for b in bands_centi) if bands_centi is not None else None
    return Reading(f"r{n}", "m1", at, total_kwh_centi * 10, bands, **kw)  # type: ignore[arg-type]


def assert_lines_consistent(charge: Charge) -> None:
    assert sum(line.amount_micros for line in charge.lines) == charge.amount_micros
    assert sum(line.quantity for line in charge.lines if line.component in QUANTITY_COMPONENTS) == charge.quantity
    assert all(line.amount_micros >= 0 and line.quantity > 0 for line in charge.lines)


MONTHLY_BLOCKS = tariff(
    version(tiers=Tiers(TierMode.PRICE, (TierBlock(100 * KWH, YUAN), TierBlock(None, 3 * YUAN // 2))))
)
MONTHLY_SURCHARGE = tariff(
    version(
        price_micros=YUAN,
        tiers=Tiers(TierMode.SURCHARGE, (TierBlock(100 * KWH, 0), TierBlock(None, YUAN // 2))),
    )
)


@pytest.mark.parametrize("t", [MONTHLY_BLOCKS, MONTHLY_SURCHARGE], ids=["tier price", "tier surcharge"])
def test_130_kwh_at_1_yuan_for_the_first_100_and_1_5_above_costs_145_in_one_go(t: Tariff) -> None:
    outcomes = run(context(t), [reading(0, local(2025, 3, 1), 0), reading(1, local(2025, 3, 20), 13_000)])
    assert isinstance(outcomes[0], Skipped) and outcomes[0].reason.startswith("baseline")
    (charge,) = charges(outcomes)
    assert charge.amount_micros == 145 * YUAN
    assert charge.quantity == 130 * KWH
    assert_lines_consistent(charge)


@pytest.mark.parametrize("t", [MONTHLY_BLOCKS, MONTHLY_SURCHARGE], ids=["tier price", "tier surcharge"])
def test_130_kwh_over_several_readings_also_costs_145_and_splits_at_100(t: Tariff) -> None:
    totals = [0, 4_000, 9_000, 11_500, 13_000]
    readings = [reading(i, local(2025, 3, 1 + 5 * i), total) for i, total in enumerate(totals)]
    rated = charges(run(context(t), readings))
    assert [c.amount_micros for c in rated] == [40 * YUAN, 50 * YUAN, 10 * YUAN + 22_500_000, 22_500_000]
    assert sum(c.amount_micros for c in rated) == 145 * YUAN
    crossing = rated[2]
    tier_lines = {line.tier: line.quantity for line in crossing.lines if line.tier is not None}
    assert tier_lines == {0: 10 * KWH, 1: 15 * KWH}


def test_the_tier_cycle_restarts_each_month_and_a_crossing_interval_is_split_by_time() -> None:
    ctx = context(MONTHLY_BLOCKS)
    # 120 kWh over 2 days that straddle 1 April 00:00: 60 kWh in each month, each within the first block.
    outcomes = run(ctx, [reading(0, local(2025, 3, 31), 0), reading(1, local(2025, 4, 2), 12_000)])
    (charge,) = charges(outcomes)
    assert charge.amount_micros == 120 * YUAN
    assert outcomes[-1].state.cycle_start == datetime(2025, 4, 1).date()
    assert outcomes[-1].state.cycle_energy_wh == 60 * KWH


TOU_PEAK_VALLEY = tariff(
    version(
        tou=Tou(
            ((Band.PEAK, YUAN), (Band.VALLEY, 300_000)),
            (
                Season(
                    "all",
                    tuple(range(1, 13)),
                    (
                        TouPeriod(0, 480, Band.VALLEY),
                        TouPeriod(480, 1320, Band.PEAK),
                        TouPeriod(1320, 1440, Band.VALLEY),
                    ),
                ),
            ),
        )
    )
)


def test_a_tou_interval_crossing_peak_to_valley_at_22_00_uses_the_band_registers() -> None:
    # Tuesday 2025-03-04, 21:00 -> 23:00; the meter says 3 kWh peak and 1 kWh valley.
    readings = [
        reading(0, local(2025, 3, 4, 21), 100_000, [0, 40_000, 30_000, 30_000]),
        reading(1, local(2025, 3, 4, 23), 100_400, [0, 40_300, 30_000, 30_100]),
    ]
    (charge,) = charges(run(context(TOU_PEAK_VALLEY), readings))
    assert not charge.estimated
    bands = {line.band: line.quantity for line in charge.lines}
    assert bands == {Band.PEAK: 3 * KWH, Band.VALLEY: 1 * KWH}
    assert charge.amount_micros == 3 * YUAN + 300_000
    assert_lines_consistent(charge)


def test_a_tou_interval_crossing_peak_to_valley_without_band_registers_is_split_by_time_and_estimated() -> None:
    readings = [reading(0, local(2025, 3, 4, 21), 100_000), reading(1, local(2025, 3, 4, 23), 100_400)]
    (charge,) = charges(run(context(TOU_PEAK_VALLEY), readings))
    assert charge.estimated
    assert {line.band: line.quantity for line in charge.lines} == {Band.PEAK: 2 * KWH, Band.VALLEY: 2 * KWH}
    assert charge.amount_micros == 2 * YUAN + 600_000


def test_band_registers_that_trail_the_total_by_rounding_are_scaled_to_the_total_exactly() -> None:
    readings = [
        reading(0, local(2025, 3, 4, 21), 100_000, [0, 40_000, 30_000, 30_000]),
        reading(1, local(2025, 3, 4, 23), 100_401, [0, 40_300, 30_000, 30_100]),
    ]
    (charge,) = charges(run(context(TOU_PEAK_VALLEY), readings))
    assert not charge.estimated
    assert sum(line.quantity for line in charge.lines) == charge.quantity == 4010


ANNUAL_RESIDENTIAL = tariff(
    version(
        price_micros=488_300,
        tiers=Tiers(
            TierMode.SURCHARGE,
            (TierBlock(2760 * KWH, 0), TierBlock(4800 * KWH, 50_000), TierBlock(None, 300_000)),
        ),
    ),
    cycle=Cycle(CyclePeriod.ANNUAL, 1, 1),
)


def test_an_annual_tier_crossing_2760_and_4800_kwh_adds_0_05_and_0_30_surcharges_exactly() -> None:
    readings = [
        reading(0, local(2025, 1, 1), 0),
        reading(1, local(2025, 6, 1), 270_000),
        reading(2, local(2025, 12, 1), 490_000),
    ]
    first, second = charges(run(context(ANNUAL_RESIDENTIAL), readings))
    assert first.amount_micros == 2700 * 488_300
    surcharges = {line.tier: line.quantity for line in second.lines if line.component == COMPONENT_TIER_SURCHARGE}
    assert surcharges == {0: 60 * KWH, 1: 2040 * KWH, 2: 100 * KWH}
    assert second.amount_micros == 2200 * 488_300 + 2040 * 50_000 + 100 * 300_000  # 1,206.26 yuan
    assert_lines_consistent(second)


def test_the_annual_cycle_restarts_on_1_january() -> None:
    readings = [
        reading(0, local(2025, 1, 1), 0),
        reading(1, local(2025, 12, 31), 480_000),
        reading(2, local(2026, 1, 31), 490_000),
    ]
    outcomes = run(context(ANNUAL_RESIDENTIAL), readings)
    last = charges(outcomes)[-1]
    assert {line.component for line in last.lines} == {COMPONENT_ENERGY, COMPONENT_TIER_SURCHARGE}
    assert outcomes[-1].state.cycle_start == datetime(2026, 1, 1).date()
    # 30 of the interval's 31 days are in 2026.
    assert outcomes[-1].state.cycle_energy_wh == 100 * KWH * 30 // 31


@pytest.mark.parametrize(
    ("bands", "expected_bands"),
    [(None, None), ([999_999_90, 0, 999_999_00, 0], [60, 0, 90, 0])],
    ids=["total only", "with band registers"],
)
def test_a_register_rolling_over_at_999999_99_is_billed_as_the_small_delta(
    bands: list[int] | None, expected_bands: list[int] | None
) -> None:
    t = tariff(version(price_micros=YUAN))
    after = [50, 0, 40, 0] if bands is not None else None
    readings = [reading(0, local(2025, 3, 4), 99_999_900, bands), reading(1, local(2025, 3, 4, 1), 50, after)]
    (charge,) = charges(run(context(t), readings))
    assert charge.quantity == 1500  # 999999.00 -> 999999.99 -> 0.00 -> 0.50 kWh
    assert charge.amount_micros == 1_500_000


def test_a_meter_going_backwards_is_quarantined_with_the_numbers_and_the_state_kept() -> None:
    ctx = context(tariff(version(price_micros=YUAN)))
    outcomes = run(ctx, [reading(0, local(2025, 3, 4), 500_000), reading(1, local(2025, 3, 4, 1), 1_000)])
    quarantined = outcomes[1]
    assert isinstance(quarantined, Quarantined)
    assert quarantined.state == outcomes[0].state
    assert "5000000" in quarantined.reason and "10000" in quarantined.reason and "100000 W" in quarantined.reason


def test_implausible_power_is_quarantined() -> None:
    ctx = context(tariff(version(price_micros=YUAN)), max_power_w=10_000)
    outcomes = run(ctx, [reading(0, local(2025, 3, 4), 0), reading(1, local(2025, 3, 4, 1), 2_000)])
    assert isinstance(outcomes[1], Quarantined)
    assert "20000 Wh in 3600 s is 20000 W average" in outcomes[1].reason


def test_a_meter_replaced_mid_month_keeps_the_tier_cycle_and_the_initial_reading_is_not_charged() -> None:
    readings = [
        reading(0, local(2025, 3, 1), 500_000),
        reading(1, local(2025, 3, 10), 508_000, kind=ReadingKind.FINAL),
        reading(2, local(2025, 3, 10, 12), 0, kind=ReadingKind.INITIAL),
        reading(3, local(2025, 3, 20), 5_000),
    ]
    outcomes = run(context(MONTHLY_BLOCKS), readings)
    assert isinstance(outcomes[2], Skipped) and "replacement" in outcomes[2].reason
    first, second = charges(outcomes)
    assert first.amount_micros == 80 * YUAN
    assert {line.tier: line.quantity for line in second.lines} == {0: 20 * KWH, 1: 30 * KWH}
    assert second.amount_micros == 20 * YUAN + 45 * YUAN
    assert outcomes[-1].state.cycle_energy_wh == 130 * KWH


def test_after_a_final_reading_a_regular_reading_is_quarantined_until_the_initial_one() -> None:
    readings = [
        reading(0, local(2025, 3, 1), 500_000),
        reading(1, local(2025, 3, 10), 508_000, kind=ReadingKind.FINAL),
        reading(2, local(2025, 3, 11), 100),
    ]
    outcomes = run(context(MONTHLY_BLOCKS), readings)
    assert isinstance(outcomes[2], Quarantined)
    assert "initial" in outcomes[2].reason
    assert outcomes[2].state.awaiting_initial


HOLIDAY_TOU = tariff(
    version(
        tou=Tou(
            ((Band.PEAK, 3 * YUAN), (Band.FLAT, 2 * YUAN), (Band.VALLEY, YUAN)),
            (
                Season(
                    "all",
                    tuple(range(1, 13)),
                    workday=(TouPeriod(0, 1440, Band.PEAK),),
                    weekend=(TouPeriod(0, 1440, Band.VALLEY),),
                    holiday=(TouPeriod(0, 1440, Band.FLAT),),
                ),
            ),
        )
    )
)


@pytest.mark.parametrize(
    ("day", "band"),
    [
        ((2025, 1, 26), Band.PEAK),  # a Sunday that is a make-up workday (调休)
        ((2025, 2, 8), Band.PEAK),  # a Saturday that is a make-up workday
        ((2025, 1, 29), Band.FLAT),  # Spring Festival
        ((2025, 2, 1), Band.VALLEY),  # an ordinary Saturday in the Spring Festival week
        ((2025, 1, 27), Band.PEAK),  # an ordinary Monday
    ],
)
def test_holidays_and_make_up_workdays_choose_the_schedule(day: tuple[int, int, int], band: Band) -> None:
    readings = [reading(0, local(*day, 10), 0), reading(1, local(*day, 12), 200)]
    (charge,) = charges(run(context(HOLIDAY_TOU), readings))
    assert [(line.band, line.quantity) for line in charge.lines] == [(band, 2 * KWH)]


def test_an_admin_override_wins_over_the_statutory_calendar() -> None:
    from powergate.domain.calendar import DayType

    calendar = SiteCalendar.china({datetime(2025, 1, 26).date(): DayType.HOLIDAY})
    ctx = RatingContext(HOLIDAY_TOU, calendar, SHANGHAI)
    (charge,) = charges(run(ctx, [reading(0, local(2025, 1, 26, 10), 0), reading(1, local(2025, 1, 26, 12), 200)]))
    assert charge.lines[0].band is Band.FLAT


def test_a_price_change_splits_billing_at_that_instant() -> None:
    t = tariff(
        TariffVersion(datetime(2025, 1, 1), price_micros=YUAN),
        TariffVersion(datetime(2025, 7, 1), price_micros=2 * YUAN),
    )
    readings = [reading(0, local(2025, 6, 30, 12), 0), reading(1, local(2025, 7, 1, 12), 2_400)]
    (charge,) = charges(run(context(t), readings))
    assert [(line.version, line.quantity, line.price_micros) for line in charge.lines] == [
        (0, 12 * KWH, YUAN),
        (1, 12 * KWH, 2 * YUAN),
    ]
    assert charge.amount_micros == 36 * YUAN


def test_an_interval_before_the_first_version_is_quarantined() -> None:
    t = tariff(TariffVersion(datetime(2025, 1, 1), price_micros=YUAN))
    outcomes = run(context(t), [reading(0, local(2024, 12, 31), 0), reading(1, local(2025, 1, 2), 100)])
    assert isinstance(outcomes[1], Quarantined) and "2025-01-01" in outcomes[1].reason


def test_duplicates_and_older_readings_are_skipped_and_change_nothing() -> None:
    ctx = context(tariff(version(price_micros=YUAN)))
    base = run(ctx, [reading(0, local(2025, 3, 1), 0), reading(1, local(2025, 3, 2), 1_000)])
    state = base[-1].state
    same_id = rate(state, reading(1, local(2025, 3, 3), 2_000), ctx)
    older = rate(state, reading(7, local(2025, 3, 1, 12), 500), ctx)
    same_instant = rate(state, reading(8, local(2025, 3, 2), 1_000), ctx)
    for outcome in (same_id, older, same_instant):
        assert isinstance(outcome, Skipped) and outcome.state is state
    assert "duplicate" in same_id.reason and "out of order" in older.reason


def test_a_zero_duration_interval_with_energy_is_quarantined() -> None:
    ctx = context(tariff(version(price_micros=YUAN)))
    state = run(ctx, [reading(0, local(2025, 3, 1), 0)])[-1].state
    outcome = rate(state, reading(1, local(2025, 3, 1), 100), ctx)
    assert isinstance(outcome, Quarantined) and "zero-duration" in outcome.reason


def test_fractions_of_a_micro_are_carried_so_the_sum_never_drifts() -> None:
    # A Modbus meter counting 1 Wh: 1 Wh at 0.5283 yuan/kWh is 528,300 nanos, 528 micros and 300 nanos carried.
    ctx = context(tariff(version(price_micros=528_300)), register_step_wh=1)
    readings = [Reading(f"r{i}", "m1", local(2025, 3, 1, i), i) for i in range(11)]
    amounts = [c.amount_micros for c in charges(run(ctx, readings))]
    assert amounts[:4] == [528, 528, 528, 529]
    assert sum(amounts) == 10 * 528_300 // 1000 == 5283


DORMITORY = tariff(version(price_micros=580_000, base_allowance_quantity=30 * KWH))


def test_the_base_allowance_is_free_and_the_rest_pays_the_price() -> None:
    readings = [
        reading(0, local(2025, 3, 1), 0),
        reading(1, local(2025, 3, 5), 2_000),
        reading(2, local(2025, 3, 10), 5_000),
    ]
    first, second = charges(run(context(DORMITORY), readings))
    assert first.amount_micros == 0
    assert {line.component: line.quantity for line in second.lines} == {
        COMPONENT_BASE_ALLOWANCE: 10 * KWH,
        COMPONENT_ENERGY: 20 * KWH,
    }
    assert second.amount_micros == 20 * 580_000


def test_tiers_count_the_allowance_and_charge_only_beyond_it() -> None:
    t = tariff(
        version(
            base_allowance_quantity=30 * KWH,
            tiers=Tiers(TierMode.PRICE, (TierBlock(50 * KWH, YUAN), TierBlock(None, 2 * YUAN))),
        )
    )
    (charge,) = charges(run(context(t), [reading(0, local(2025, 3, 1), 0), reading(1, local(2025, 3, 20), 6_000)]))
    assert [(line.component, line.tier, line.quantity) for line in charge.lines] == [
        (COMPONENT_BASE_ALLOWANCE, None, 30 * KWH),
        (COMPONENT_TIER_ENERGY, 0, 20 * KWH),
        (COMPONENT_TIER_ENERGY, 1, 10 * KWH),
    ]
    assert charge.amount_micros == 20 * YUAN + 20 * YUAN


def test_a_tou_allowance_takes_its_free_energy_from_each_band_pro_rata() -> None:
    t = tariff(version(tou=TOU_PEAK_VALLEY.versions[0].tou, base_allowance_quantity=2 * KWH))
    readings = [
        reading(0, local(2025, 3, 4, 21), 0, [0, 0, 0, 0]),
        reading(1, local(2025, 3, 4, 23), 400, [0, 300, 0, 100]),
    ]
    (charge,) = charges(run(context(t), readings))
    free = {line.band: line.quantity for line in charge.lines if line.component == COMPONENT_BASE_ALLOWANCE}
    assert free == {Band.PEAK: 1500, Band.VALLEY: 500}
    assert charge.amount_micros == 1500 * YUAN // 1000 + 500 * 300_000 // 1000
    assert_lines_consistent(charge)


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (0, [0, 0], [0, 0]),
        (7, [0, 5], [0, 7]),
        (5, [2, 2, 1], [2, 2, 1]),
        (1, [1, 1], [1, 0]),
    ],
)
def test_largest_remainder_splits_exactly(total: int, weights: list[int], parts: list[int]) -> None:
    assert largest_remainder(total, weights) == parts


def test_the_hot_path_constructors_build_objects_equal_to_the_dataclasses() -> None:
    from powergate.domain.rating import new_charge, new_line, new_state

    r = Reading("r1", "m1", local(2025, 3, 1), 100, (1, 2, 3, 4), ReadingKind.FINAL)
    assert new_state("m1", r, True, r.at.date(), 5, 7) == RatingState(
        "m1", "r1", r.at, 100, (1, 2, 3, 4), True, r.at.date(), 5, 7
    )
    line = new_line(COMPONENT_ENERGY, Band.PEAK, None, 10, 20, 30, 0)
    assert line == ChargeLine(COMPONENT_ENERGY, Band.PEAK, None, 10, 20, 30, 0)
    start = local(2025, 2, 1)
    assert new_charge(r, start, 10, 30, (line,), False) == Charge("r1", "m1", start, r.at, 10, 30, (line,), False)
    with pytest.raises(AttributeError):
        line.amount_micros = 1  # type: ignore[misc]
