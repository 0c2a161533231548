"""Rating speed: readings rated per second, pure (no database), on one core.

Three tariffs: flat; TOU with band registers (the meter splits TOU itself); TOU without band registers plus
annual tiers (split by time overlap against the cached per-date schedule, tier thresholds crossed). Each run
rates a fleet's readings every 15 minutes through a month, meter by meter, as the ingest service does; the
figure is the median of 5 runs. The ingest goal is 50,000 readings/s rated AND posted on one core.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.rating import RatingContext, RatingState, Reading, rate
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

RUNS = 5
TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2025, 1, 1, tzinfo=TZ).astimezone(UTC)
SCHEDULE = (
    TouPeriod(0, 480, Band.VALLEY),
    TouPeriod(480, 600, Band.FLAT),
    TouPeriod(600, 720, Band.PEAK),
    TouPeriod(720, 1140, Band.FLAT),
    TouPeriod(1140, 1260, Band.SHARP),
    TouPeriod(1260, 1320, Band.PEAK),
    TouPeriod(1320, 1440, Band.VALLEY),
)
TOU = Tou(
    ((Band.SHARP, 1_350_000), (Band.PEAK, 1_050_000), (Band.FLAT, 650_000), (Band.VALLEY, 310_000)),
    (Season("all", tuple(range(1, 13)), SCHEDULE, weekend=((TouPeriod(0, 1440, Band.VALLEY)),)),),
)
V0 = datetime(2024, 1, 1)
FLAT = Tariff("flat", "flat", Commodity.ELECTRICITY, "CNY", (TariffVersion(V0, price_micros=650_000),))
TOU_TARIFF = Tariff("tou", "tou", Commodity.ELECTRICITY, "CNY", (TariffVersion(V0, tou=TOU),))
TIERS = Tiers(TierMode.SURCHARGE, (TierBlock(2_760_000, 0), TierBlock(4_800_000, 50_000), TierBlock(None, 300_000)))
TOU_TIERS = Tariff(
    "tou-tiers",
    "tou+tiers",
    Commodity.ELECTRICITY,
    "CNY",
    (TariffVersion(V0, tou=TOU, tiers=TIERS),),
    Cycle(CyclePeriod.MONTHLY, 1, 1),
)


def readings(meters: int, per_meter: int, with_bands: bool) -> list[list[Reading]]:
    fleet = []
    for meter in range(meters):
        meter_id = f"M{meter}"
        total = 1_000_000 + meter * 10
        bands = [0, 250_000, 500_000, 250_000]
        series = []
        for n in range(per_meter):
            at = START + timedelta(minutes=15 * n)
            step = 10 * (1 + (n * 7 + meter) % 40)  # 0.01 .. 0.40 kWh per quarter hour
            total += step
            bands[(n // 8) % 4] += step
            series.append(Reading(f"{meter_id}:{n}", meter_id, at, total, tuple(bands) if with_bands else None))  # type: ignore[arg-type]
        fleet.append(series)
    return fleet


def rated_per_second(tariff: Tariff, fleet: list[list[Reading]]) -> float:
    ctx = RatingContext(tariff, SiteCalendar.china(), TZ, max_power_w=1_000_000)
    count = sum(len(series) for series in fleet)
    started = time.perf_counter()
    for series in fleet:
        state = RatingState(series[0].meter_id)
        for reading in series:
            state = rate(state, reading, ctx).state
    return count / (time.perf_counter() - started)


def run(quick: bool) -> str:
    meters, per_meter = (20, 500) if quick else (100, 2880)  # 2,880 = a month of quarter hours
    cases = [
        ("flat, total register only", FLAT, False),
        ("TOU with band registers", TOU_TARIFF, True),
        ("TOU + monthly tiers, total only (time-overlap estimate)", TOU_TIERS, False),
    ]
    rows = []
    for name, tariff, with_bands in cases:
        fleet = readings(meters, per_meter, with_bands)
        figures = [rated_per_second(tariff, fleet) for _ in range(RUNS)]
        median = statistics.median(figures)
        rows.append(f"| {name} | {median:,.0f} | {1e6 / median:.1f} |")
    return (
        "## Rating (pure, no database)\n\n"
        f"{meters} meters x {per_meter} readings (every 15 min), rated meter by meter on one core; "
        f"median of {RUNS} runs. `bench/bench_rating.py`.\n\n"
        "| tariff | readings/s | µs/reading |\n|---|---:|---:|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    print(run(quick=False))
