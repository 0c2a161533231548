"""Tariff files (TOML, JSON) and readings files (CSV, JSON): exact numbers, problems naming the field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from powergate.domain.rating import ReadingKind
from powergate.domain.tariff import Band, CyclePeriod, TierMode
from powergate.domain.tariff_files import DataFileError, load_readings, load_tariff, parse_readings, parse_tariff

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tariffs"

TOU_TOML = """
id = "tou"
name = "TOU"

[[versions]]
effective_from = "2025-01-01"

[versions.tou.prices]
peak = 1.05
flat = "0.6500"
valley = "0.3100"

[[versions.tou.seasons]]
name = "summer"
months = "7-9"
schedule = [
  { start = "00:00", band = "valley" },
  { start = "08:00", band = "flat" },
  { start = "10:00", band = "peak" },
  { start = "22:00", band = "valley" },
]

[[versions.tou.seasons]]
name = "winter"
months = "10-6"
schedule = [
  { start = "00:00", band = "valley" },
  { start = "08:00", band = "flat" },
  { start = "18:00", band = "%s" },
  { start = "22:00", band = "valley" },
]
"""


def problems_of(text: str, fmt: str = "toml") -> list[str]:
    tariff, problems = parse_tariff(text, fmt=fmt)
    assert tariff is None
    return [str(p) for p in problems]


def test_a_tou_tariff_loads_with_exact_prices_and_implicit_period_ends() -> None:
    tariff = load_tariff(TOU_TOML % "peak")
    version = tariff.versions[0]
    assert version.tou is not None
    assert version.tou.price_of(Band.PEAK) == 1_050_000  # a TOML float read as an exact decimal
    summer, winter = version.tou.seasons
    assert summer.months == (7, 8, 9)
    assert winter.months == (10, 11, 12, 1, 2, 3, 4, 5, 6)
    assert [(p.start_minute, p.end_minute, p.band) for p in summer.workday][-2:] == [
        (600, 1320, Band.PEAK),
        (1320, 1440, Band.VALLEY),
    ]


def test_an_unknown_band_names_its_field_path() -> None:
    assert problems_of(TOU_TOML % "midpeak") == [
        "versions[0].tou.seasons[1].schedule[2].band: unknown band 'midpeak'; expected sharp, peak, flat, valley"
    ]


def test_a_band_without_a_price_names_its_field_path() -> None:
    assert problems_of(TOU_TOML % "sharp") == [
        "versions[0].tou.seasons[1].schedule[2].band: band 'sharp' has no price in tou.prices"
    ]


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ('price = "-0.10"', "versions[0].price: negative price -100000 micros"),
        ('price = "abc"', "versions[0].price: 'abc' is not a decimal amount"),
        ('prise = "0.5"', "versions[0].prise: unknown field; expected base_allowance, effective_from, price"),
        (
            'price = "0.5"\nbase_allowance = "1.0001"',
            "versions[0].base_allowance: '1.0001' has more than 3 decimals (the finest unit is 0.001)",
        ),
        (
            'price = "0.5"\ntiers = { mode = "surcharge", blocks = [{ up_to = "200", price = "0" }, '
            '{ up_to = "100", price = "0.1" }, { price = "0.3" }] }',
            "versions[0].tiers.blocks[1].up_to: 100000 is not above the previous threshold 200000",
        ),
        (
            'price = "0.5"\ntiers = { mode = "steps", blocks = [{ price = "0" }] }',
            "versions[0].tiers.mode: unknown value 'steps'; expected price, surcharge",
        ),
        (
            'price = "0.5"\nstanding_charges = [{ name = "x", amount = "1", per = "week" }]',
            "versions[0].standing_charges[0].per: unknown value 'week'; expected day, month",
        ),
    ],
)
def test_version_field_problems(fragment: str, expected: str) -> None:
    text = f'id = "t"\n[[versions]]\neffective_from = "2025-01-01"\n{fragment}\n'
    assert any(message.startswith(expected) for message in problems_of(text)), problems_of(text)


def test_explicit_period_ends_reveal_gaps_and_overlaps() -> None:
    text = """
id = "t"
[[versions]]
effective_from = 2025-01-01
tou.prices = { peak = "1", valley = "0.3" }
[[versions.tou.seasons]]
months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
schedule = [
  { start = "00:00", end = "07:00", band = "valley" },
  { start = "08:00", end = "23:00", band = "peak" },
  { start = "22:00", end = "24:00", band = "valley" },
]
"""
    assert problems_of(text) == [
        "versions[0].tou.seasons[0].schedule: gap 07:00-08:00 has no band",
        "versions[0].tou.seasons[0].schedule[2].start: 22:00 overlaps the period before (to 23:00)",
    ]


def test_a_json_tariff_with_tiers_and_an_annual_cycle_loads() -> None:
    text = """{"id": "r", "cycle": {"period": "annual", "start_month": 1, "start_day": 1},
      "versions": [{"effective_from": "2025-01-01T00:00", "price": 0.4883,
        "tiers": {"mode": "surcharge", "blocks": [{"up_to": 2760, "price": 0}, {"up_to": "4800", "price": "0.05"},
                                                   {"price": "0.30"}]}}]}"""
    tariff = load_tariff(text)
    assert tariff.cycle.period is CyclePeriod.ANNUAL
    tiers = tariff.versions[0].tiers
    assert tiers is not None and tiers.mode is TierMode.SURCHARGE
    assert tiers.thresholds == (2_760_000, 4_800_000)
    assert tariff.versions[0].price_micros == 488_300


def test_broken_syntax_and_missing_versions_are_problems_not_crashes() -> None:
    assert problems_of("id = ", "toml")[0].startswith("not valid TOML")
    assert problems_of("[1, 2]", "json") == ["the tariff must be a table (an object) at the top level"]
    assert problems_of('id = "x"') == ["versions: missing; a tariff needs at least one version"]


def test_load_tariff_raises_with_every_problem_and_the_source() -> None:
    with pytest.raises(DataFileError) as error:
        load_tariff(TOU_TOML % "midpeak", source="bad.toml")
    assert str(error.value).startswith("bad.toml: versions[0].tou.seasons[1].schedule[2].band: unknown band")


@pytest.mark.parametrize(
    "path", sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name
)
def test_every_example_tariff_is_valid(path: Path) -> None:
    load_tariff(path.read_text(encoding="utf-8"), fmt=path.suffix.lstrip("."), source=path.name)


READINGS_CSV = """reading_id,meter_id,timestamp,total_kwh,sharp_kwh,peak_kwh,flat_kwh,valley_kwh,kind
1,A,2025-07-01T08:00:00+08:00,1200.01,100.00,400.00,400.00,300.01,
2,A,2025-07-01T09:00:00+08:00,1201.5,,,,,final
"""


def test_a_readings_csv_loads_with_exact_registers_in_utc() -> None:
    first, second = load_readings(READINGS_CSV)
    assert first.total_wh == 1_200_010
    assert first.bands_wh == (100_000, 400_000, 400_000, 300_010)
    assert first.at == datetime(2025, 7, 1, 0, tzinfo=UTC)
    assert second.bands_wh is None and second.kind is ReadingKind.FINAL


def test_a_readings_json_loads_numbers_exactly() -> None:
    (reading,) = load_readings(
        '{"readings": [{"reading_id": "r", "meter_id": "m", '
        '"timestamp": "2025-07-01T08:00:00+08:00", "total_m3": 12.345}]}'
    )
    assert reading.total_wh == 12_345


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("1,A,2025-07-01T08:00:00,1,,,,,", "line 2.timestamp: '2025-07-01T08:00:00' has no UTC offset"),
        ("1,A,2025-07-01T08:00:00+08:00,x,,,,,", "line 2.total: 'x' is not a decimal quantity"),
        ("1,A,2025-07-01T08:00:00+08:00,1,1,,,,", "line 2: give all four band registers"),
        ("1,A,2025-07-01T08:00:00+08:00,1,,,,,removed", "line 2.kind: unknown kind 'removed'"),
        ("1,A,2025-07-01T08:00:00+08:00,,,,,,", "line 2.total_kwh: missing"),
    ],
)
def test_bad_readings_name_the_line_and_field(row: str, expected: str) -> None:
    header = READINGS_CSV.splitlines()[0]
    _, problems = parse_readings(f"{header}\n{row}\n")
    assert any(str(p).startswith(expected) for p in problems), problems
