"""Rating properties (Hypothesis): no drift, exact tier splits, harmless duplicates and reordering.

The readings carry band registers consistent with the total (as a TOU meter reports them), stay within one
tariff version and one tier cycle where the property needs additivity, and are spread over days so that time
splits, tier crossings and the rounding carry are all exercised.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.rating import (
    COMPONENT_TIER_ENERGY,
    COMPONENT_TIER_SURCHARGE,
    QUANTITY_COMPONENTS,
    Rated,
    RatingContext,
    RatingState,
    Reading,
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

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2025, 3, 1, 1, tzinfo=TZ).astimezone(UTC)
V0 = datetime(2025, 1, 1)
TOU = Tou(
    ((Band.SHARP, 1_350_123), (Band.PEAK, 1_050_001), (Band.FLAT, 650_007), (Band.VALLEY, 310_000)),
    (
        Season(
            "all",
            tuple(range(1, 13)),
            (
                TouPeriod(0, 480, Band.VALLEY),
                TouPeriod(480, 600, Band.FLAT),
                TouPeriod(600, 1140, Band.PEAK),
                TouPeriod(1140, 1260, Band.SHARP),
                TouPeriod(1260, 1440, Band.VALLEY),
            ),
            weekend=(TouPeriod(0, 1440, Band.VALLEY),),
        ),
    ),
)
TIERS = Tiers(TierMode.SURCHARGE, (TierBlock(100_000, 0), TierBlock(200_000, 50_001), TierBlock(None, 300_007)))
PRICE_TIERS = Tiers(TierMode.PRICE, (TierBlock(50_000, 488_301), TierBlock(120_000, 538_333), TierBlock(None, 788_377)))
# Annual cycles keep the March readings in one cycle: the property needs a single cycle to be additive.
ANNUAL = Cycle(CyclePeriod.ANNUAL, 1, 1)
TARIFFS = {
    "flat": Tariff("flat", "flat", Commodity.ELECTRICITY, "CNY", (TariffVersion(V0, price_micros=528_347),)),
    "tou": Tariff("tou", "tou", Commodity.ELECTRICITY, "CNY", (TariffVersion(V0, tou=TOU),)),
    "tou+tiers": Tariff("tt", "tt", Commodity.ELECTRICITY, "CNY", (TariffVersion(V0, tou=TOU, tiers=TIERS),), ANNUAL),
    "tier price": Tariff("tp", "tp", Commodity.ELECTRICITY, "CNY", (TariffVersion(V0, tiers=PRICE_TIERS),), ANNUAL),
    "flat+allowance": Tariff(
        "fa",
        "fa",
        Commodity.ELECTRICITY,
        "CNY",
        (TariffVersion(V0, price_micros=580_001, base_allowance_quantity=30_000),),
        ANNUAL,
    ),
}
CONTEXTS = {
    name: RatingContext(t, SiteCalendar.china(), TZ, register_step_wh=1, max_power_w=10**9)
    for name, t in TARIFFS.items()
}

steps = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=3 * 24 * 60),  # minutes since the previous reading
        st.lists(st.integers(min_value=0, max_value=9_000), min_size=4, max_size=4),  # Wh per band
    ),
    min_size=1,
    max_size=12,
)


def build_readings(start_bands: Sequence[int], increments: Sequence[tuple[int, list[int]]]) -> list[Reading]:
    bands = list(start_bands)
    at = START
    readings = [Reading("r0", "m", at, sum(bands), tuple(bands))]  # type: ignore[arg-type]
    for index, (minutes, added) in enumerate(increments, start=1):
        at += timedelta(minutes=minutes)
        bands = [b + a for b, a in zip(bands, added, strict=True)]
        readings.append(Reading(f"r{index}", "m", at, sum(bands), tuple(bands)))  # type: ignore[arg-type]
    return readings


def run(ctx: RatingContext, readings: Sequence[Reading]) -> tuple[list[Rated], RatingState]:
    state = RatingState("m")
    rated = []
    for reading in readings:
        outcome = rate(state, reading, ctx)
        if isinstance(outcome, Rated):
            rated.append(outcome)
        state = outcome.state
    return rated, state


start_bands = st.lists(st.integers(min_value=0, max_value=1_000_000), min_size=4, max_size=4)
tariff_names = st.sampled_from(sorted(TARIFFS))


@settings(max_examples=200, deadline=None)
@given(tariff_names, start_bands, steps)
def test_the_charges_of_a_run_of_readings_sum_to_the_one_go_charge(
    name: str, first: list[int], increments: list
) -> None:  # type: ignore[type-arg]
    ctx = CONTEXTS[name]
    readings = build_readings(first, increments)
    step_by_step, _ = run(ctx, readings)
    one_go, _ = run(ctx, [readings[0], readings[-1]])
    assert sum(r.charge.amount_micros for r in step_by_step) == one_go[0].charge.amount_micros


@settings(max_examples=200, deadline=None)
@given(tariff_names, start_bands, steps)
def test_the_amounts_sum_to_the_floor_of_the_exact_nanos_and_lines_split_exactly(
    name: str,
    first: list[int],
    increments: list,  # type: ignore[type-arg]
) -> None:
    ctx = CONTEXTS[name]
    rated, state = run(ctx, build_readings(first, increments))
    exact_nanos = sum(line.quantity * line.price_micros for r in rated for line in r.charge.lines)
    assert sum(r.charge.amount_micros for r in rated) == exact_nanos // 1000
    assert state.carry_nanos == exact_nanos % 1000
    for outcome in rated:
        charge = outcome.charge
        assert charge.amount_micros >= 0
        assert sum(line.amount_micros for line in charge.lines) == charge.amount_micros
        assert all(line.amount_micros >= 0 and line.quantity > 0 for line in charge.lines)
        assert sum(line.quantity for line in charge.lines if line.component in QUANTITY_COMPONENTS) == charge.quantity


@settings(max_examples=200, deadline=None)
@given(tariff_names, start_bands, steps, st.integers(min_value=0, max_value=400_000), st.booleans())
def test_tier_lines_respect_the_thresholds(
    name: str,
    first: list[int],
    increments: list,
    energy_before_wh: int,
    use_cycle_energy: bool,  # type: ignore[type-arg]
) -> None:
    ctx = CONTEXTS[name]
    readings = build_readings(first, increments)
    baseline = rate(RatingState("m"), readings[0], ctx).state
    if use_cycle_energy:
        baseline = RatingState(
            "m",
            baseline.last_reading_id,
            baseline.last_at,
            baseline.last_total_wh,
            baseline.last_bands_wh,
            False,
            baseline.cycle_start,
            energy_before_wh,
            0,
        )
    state = baseline
    for reading in readings[1:]:
        outcome = rate(state, reading, ctx)
        assert isinstance(outcome, Rated)
        tiers = ctx.tariff.versions[0].tiers
        position = state.cycle_energy_wh
        tier_lines = [
            line for line in outcome.charge.lines if line.component in (COMPONENT_TIER_ENERGY, COMPONENT_TIER_SURCHARGE)
        ]
        if tiers is not None:
            lower = [0, *tiers.thresholds]
            upper = [*tiers.thresholds, None]
            free = min(outcome.charge.quantity, max(0, ctx.tariff.versions[0].base_allowance_quantity - position))
            assert sum(line.quantity for line in tier_lines) == outcome.charge.quantity - free
            for line in tier_lines:
                assert line.tier is not None
                hi = upper[line.tier]
                # The interval's cycle positions [position, position + quantity) reach into this tier.
                assert line.quantity <= (hi if hi is not None else 10**18) - lower[line.tier]
                assert position + outcome.charge.quantity > lower[line.tier]
                assert hi is None or position < hi
        else:
            assert not tier_lines
        assert outcome.state.cycle_energy_wh == position + outcome.charge.quantity
        state = outcome.state


@settings(max_examples=200, deadline=None)
@given(tariff_names, start_bands, steps, st.randoms(use_true_random=False), st.integers(min_value=0, max_value=5))
def test_duplicates_and_permutations_after_the_baseline_change_nothing_in_the_total(
    name: str,
    first: list[int],
    increments: list,
    random,
    duplicates: int,  # type: ignore[no-untyped-def, type-arg]
) -> None:
    ctx = CONTEXTS[name]
    readings = build_readings(first, increments)
    in_order, _ = run(ctx, readings)
    shuffled = readings[1:] + [random.choice(readings) for _ in range(duplicates)]
    random.shuffle(shuffled)
    reordered, _ = run(ctx, [readings[0], *shuffled])
    assert sum(r.charge.amount_micros for r in reordered) == sum(r.charge.amount_micros for r in in_order)
