"""The tariff model: cycles, validation of the model, and standing charges over a span of dates."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from powergate.domain.energy import Commodity
from powergate.domain.tariff import (
    Band,
    ChargePeriod,
    Cycle,
    CyclePeriod,
    Season,
    StandingCharge,
    Tariff,
    TariffVersion,
    TierBlock,
    TierMode,
    Tiers,
    Tou,
    TouPeriod,
    daily_share_micros,
    standing_charge_lines,
)


@pytest.mark.parametrize(
    ("cycle", "day", "start", "next_start"),
    [
        (Cycle(), date(2025, 3, 15), date(2025, 3, 1), date(2025, 4, 1)),
        (Cycle(CyclePeriod.MONTHLY, 1, 15), date(2025, 3, 14), date(2025, 2, 15), date(2025, 3, 15)),
        (Cycle(CyclePeriod.MONTHLY, 1, 15), date(2025, 1, 3), date(2024, 12, 15), date(2025, 1, 15)),
        (Cycle(CyclePeriod.MONTHLY, 1, 28), date(2025, 12, 28), date(2025, 12, 28), date(2026, 1, 28)),
        (Cycle(CyclePeriod.ANNUAL, 1, 1), date(2025, 12, 31), date(2025, 1, 1), date(2026, 1, 1)),
        (Cycle(CyclePeriod.ANNUAL, 7, 1), date(2025, 3, 1), date(2024, 7, 1), date(2025, 7, 1)),
    ],
)
def test_cycle_start_and_next_start(cycle: Cycle, day: date, start: date, next_start: date) -> None:
    assert cycle.start_of(day) == start
    assert cycle.next_start(start) == next_start


def schedule(*periods: tuple[int, int, Band]) -> tuple[TouPeriod, ...]:
    return tuple(TouPeriod(*p) for p in periods)


DAY = schedule((0, 480, Band.VALLEY), (480, 1440, Band.PEAK))
PRICES = ((Band.PEAK, 1_000_000), (Band.VALLEY, 300_000))


def tou_tariff(*seasons: Season, prices: tuple[tuple[Band, int], ...] = PRICES) -> Tariff:
    return Tariff(
        "t", "t", Commodity.ELECTRICITY, "CNY", (TariffVersion(datetime(2025, 1, 1), tou=Tou(prices, seasons)),)
    )


def messages(tariff: Tariff) -> list[str]:
    return [str(p) for p in tariff.problems()]


def test_a_valid_tou_tariff_has_no_problems() -> None:
    assert messages(tou_tariff(Season("all", tuple(range(1, 13)), DAY))) == []


@pytest.mark.parametrize(
    ("tariff", "expected"),
    [
        (
            tou_tariff(Season("all", tuple(range(1, 13)), schedule((0, 600, Band.VALLEY), (480, 1440, Band.PEAK)))),
            "versions[0].tou.seasons[0].schedule[1].start: 08:00 overlaps the period before (to 10:00)",
        ),
        (
            tou_tariff(Season("all", tuple(range(1, 13)), schedule((0, 420, Band.VALLEY), (480, 1440, Band.PEAK)))),
            "versions[0].tou.seasons[0].schedule: gap 07:00-08:00 has no band",
        ),
        (
            tou_tariff(Season("all", tuple(range(1, 13)), schedule((0, 1200, Band.VALLEY)))),
            "versions[0].tou.seasons[0].schedule: gap 20:00-24:00 has no band",
        ),
        (
            tou_tariff(Season("a", tuple(range(1, 8)), DAY), Season("b", tuple(range(7, 13)), DAY)),
            "versions[0].tou.seasons[1].months: month 7 is already in seasons[0] 'a'",
        ),
        (
            tou_tariff(Season("a", tuple(range(1, 10)), DAY)),
            "versions[0].tou.seasons: months 10, 11, 12 are in no season",
        ),
        (
            tou_tariff(Season("all", tuple(range(1, 13)), schedule((0, 1440, Band.SHARP)))),
            "versions[0].tou.seasons[0].schedule[0].band: band 'sharp' has no price in tou.prices",
        ),
        (
            tou_tariff(Season("all", tuple(range(1, 13)), DAY), prices=((Band.PEAK, -1), (Band.VALLEY, 1))),
            "versions[0].tou.prices.peak: negative price -1 micros",
        ),
    ],
)
def test_tou_problems_name_the_field(tariff: Tariff, expected: str) -> None:
    assert expected in messages(tariff)


def flat_version(**fields: object) -> TariffVersion:
    return TariffVersion(datetime(2025, 1, 1), **fields)  # type: ignore[arg-type]


def flat(*versions: TariffVersion, cycle: Cycle | None = None) -> Tariff:
    return Tariff("t", "t", Commodity.ELECTRICITY, "CNY", versions, cycle or Cycle())


@pytest.mark.parametrize(
    ("tariff", "expected"),
    [
        (
            flat(
                flat_version(
                    price_micros=1,
                    tiers=Tiers(TierMode.SURCHARGE, (TierBlock(100, 0), TierBlock(100, 1), TierBlock(None, 2))),
                )
            ),
            "versions[0].tiers.blocks[1].up_to: 100 is not above the previous threshold 100",
        ),
        (
            flat(flat_version(price_micros=1, tiers=Tiers(TierMode.SURCHARGE, (TierBlock(100, 0), TierBlock(50, 1))))),
            "versions[0].tiers.blocks[1].up_to: the last block must have no up_to (it runs without end)",
        ),
        (
            flat(flat_version(price_micros=1, tiers=Tiers(TierMode.PRICE, (TierBlock(None, 1),)))),
            "versions[0].price: tiers in mode 'price' set the whole energy price; remove this or use mode 'surcharge'",
        ),
        (flat(flat_version()), "versions[0]: no energy price: give price, tou, or tiers with mode 'price'"),
        (flat(flat_version(price_micros=-5)), "versions[0].price: negative price -5 micros"),
        (
            flat(flat_version(price_micros=1, base_allowance_quantity=-1)),
            "versions[0].base_allowance: must not be negative",
        ),
        (
            flat(flat_version(price_micros=1), TariffVersion(datetime(2024, 1, 1), price_micros=1)),
            "versions[1].effective_from: 2024-01-01 00:00 is not after versions[0]'s 2025-01-01 00:00",
        ),
        (
            flat(flat_version(price_micros=1), cycle=Cycle(CyclePeriod.MONTHLY, 1, 31)),
            "cycle.start_day: 31 is not in 1..28 (every month must have the day)",
        ),
        (
            flat(flat_version(price_micros=1, standing_charges=(StandingCharge("x", -1, ChargePeriod.DAY),))),
            "versions[0].standing_charges[0].amount: negative amount -1 micros",
        ),
    ],
)
def test_version_problems_name_the_field(tariff: Tariff, expected: str) -> None:
    assert expected in messages(tariff)


def test_a_monthly_standing_charge_is_spread_exactly_over_the_month() -> None:
    charge = StandingCharge("service", 10_000_000, ChargePeriod.MONTH)
    shares = [daily_share_micros(charge, date(2025, 2, day)) for day in range(1, 29)]
    assert sum(shares) == 10_000_000
    assert max(shares) - min(shares) <= 1


def test_standing_charge_lines_follow_the_versions_and_add_up_across_any_split() -> None:
    charges_v0 = (
        StandingCharge("service", 31_000_000, ChargePeriod.MONTH),
        StandingCharge("pump", 100_000, ChargePeriod.DAY),
    )
    tariff = flat(
        TariffVersion(datetime(2025, 1, 1), price_micros=1, standing_charges=charges_v0),
        TariffVersion(
            datetime(2025, 1, 20), price_micros=1, standing_charges=(StandingCharge("pump", 200_000, ChargePeriod.DAY),)
        ),
    )
    lines = standing_charge_lines(tariff, date(2025, 1, 1), date(2025, 1, 31))
    summary = {(line.version, line.name): (line.days, line.amount_micros) for line in lines}
    assert summary == {(0, "pump"): (19, 1_900_000), (0, "service"): (19, 19_000_000), (1, "pump"): (12, 2_400_000)}
    daily = sum(
        line.amount_micros
        for d in range(1, 32)
        for line in standing_charge_lines(tariff, date(2025, 1, d), date(2025, 1, d))
    )
    assert daily == sum(line.amount_micros for line in lines)


def test_days_before_the_first_version_owe_nothing() -> None:
    tariff = flat(flat_version(price_micros=1, standing_charges=(StandingCharge("pump", 100_000, ChargePeriod.DAY),)))
    assert standing_charge_lines(tariff, date(2024, 12, 1), date(2024, 12, 31)) == ()
