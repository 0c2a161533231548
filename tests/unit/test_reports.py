"""Reports and the tariff form, without a database: Excel totals are exact sums, the year-on-year change rounds
by one rule, a tariff version typed into the form round-trips through the domain, and domain problems land on
the form field that holds them.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from powergate.domain.tariff import Problem
from powergate.domain.tariff_files import load_tariff, parse_tariff
from powergate.services import reports, tariff_edit
from powergate.services.reports import AccountMonth, MonthlyReport, SiteInfo, YearOnYearRow
from powergate.services.tariff_edit import SeasonForm, VersionForm

EXAMPLES = Path(__file__).parents[2] / "docs/examples/tariffs"
SITE = SiteInfo(1, "Gardens", "Asia/Shanghai", "CNY")
MICROS = st.integers(min_value=-(10**12), max_value=10**12)
BANDS = ("sharp", "peak", "flat", "valley")


# --- year on year ------------------------------------------------------------------------------------------------


@given(st.integers(-(10**12), 10**12), st.integers(-(10**12), 10**12))
def test_the_year_on_year_change_is_per_mille_rounded_half_away_from_zero(now: int, before: int) -> None:
    change = YearOnYearRow.change_permille(now, before)
    if before == 0:
        assert change is None
        return
    exact = Decimal(now - before) * 1000 / Decimal(before)
    assert change == int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_a_month_half_way_up_or_down_rounds_away_from_zero() -> None:
    assert YearOnYearRow.change_permille(3, 2000) == -999  # -998.5 per mille
    assert YearOnYearRow.change_permille(2001, 2000) == 1  # 0.5 -> 1
    assert YearOnYearRow.change_permille(1999, 2000) == -1  # -0.5 -> -1


# --- Excel -------------------------------------------------------------------------------------------------------


def _line(index: int, values: list[int], bands: list[int], costs: list[int]) -> AccountMonth:
    opening, recharges, deductions, fees, refunds, adjustments = values
    closing = opening + recharges - deductions - fees - refunds + adjustments
    return AccountMonth(
        index, f"A-{index}", f"Tenant {index}", "open", opening, recharges, deductions, fees, refunds, adjustments,
        closing, sum(bands), (bands[0], bands[1], bands[2], bands[3]), sum(costs),
        (costs[0], costs[1], costs[2], costs[3]), 30,
    )  # fmt: skip


LINES = st.lists(
    st.tuples(
        st.lists(MICROS, min_size=6, max_size=6),
        st.lists(st.integers(0, 10**9), min_size=4, max_size=4),
        st.lists(st.integers(0, 10**12), min_size=4, max_size=4),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LINES, st.sampled_from(["zh-CN", "en"]))
def test_the_monthly_excel_totals_are_the_exact_sums_of_its_lines(lines: list, lang: str) -> None:
    report = MonthlyReport(SITE, dt.date(2026, 10, 1), [_line(i, *line) for i, line in enumerate(lines)])
    assert report.problems == []
    sheet = load_workbook(io.BytesIO(reports.monthly_xlsx(report, lang))).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    header_at = next(i for i, row in enumerate(rows) if row[0] == reports.header("account_no", lang))
    header = rows[header_at]
    body, total = rows[header_at + 1 : -1], rows[-1]
    assert len(body) == len(lines) and total[0] == reports.header("total", lang)
    assert sheet.freeze_panes == f"A{header_at + 2}", "the header stays in view"
    assert sheet.cell(row=header_at + 1, column=1).font.b and sheet.cell(row=len(rows), column=1).font.b
    for key, attribute in (("opening", "opening_micros"), ("closing", "closing_micros"), ("fees", "fees_micros"),
                           ("recharges", "recharges_micros"), ("cost", "cost_micros")):  # fmt: skip
        column = header.index(reports.header(key, lang))
        assert _micros(total[column]) == report.total(attribute)
        assert [_micros(row[column]) for row in body] == [getattr(line, attribute) for line in report.lines]
    energy = header.index(reports.header("energy", lang))
    assert round(Decimal(str(total[energy] or 0)) * 1000) == report.total("energy_wh")
    money_cell = sheet.cell(row=header_at + 2, column=header.index(reports.header("closing", lang)) + 1)
    if lines:
        assert money_cell.number_format == reports.MONEY_FORMAT


def _micros(value: object) -> int:
    """A cell back in micros: the cell holds the exact decimal (a float of at most 15 significant digits)."""
    return round(Decimal(str(value or 0)) * 1_000_000)


def test_energy_income_and_year_on_year_sheets_have_totals_and_formats() -> None:
    energy = [reports.EnergyRow("2026-10", 4_000, (0, 1_000, 2_000, 1_000), 2_060_000, 31)]
    sheet = load_workbook(io.BytesIO(reports.energy_xlsx(energy, reports.Period.MONTH, "en"))).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:2] == ("Period", "Energy (kWh)") and rows[-1][:2] == ("Total", 4)
    assert sheet["B2"].number_format == reports.ENERGY_FORMAT
    yoy = [YearOnYearRow(m, 1_000 * m, 900 * m, 0, 0, 100 * m, 0) for m in range(1, 13)]
    sheet = load_workbook(io.BytesIO(reports.year_on_year_xlsx(yoy, 2026, "zh-CN"))).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][0] == "月份" and rows[1][0] == "2026-01" and rows[1][3] == pytest.approx(11.1)
    assert rows[-1][0] == "合计" and rows[-1][1] == 78


# --- the tariff form ---------------------------------------------------------------------------------------------


@st.composite
def tou_forms(draw: st.DrawFn) -> VersionForm:
    """A valid TOU version as an operator would type it: seasons over contiguous month ranges, schedules whose
    periods run from cut to cut, every band priced."""
    cuts = sorted(draw(st.sets(st.integers(1, 12), min_size=0, max_size=3)))
    starts = [1, *[c + 1 for c in cuts if c < 12]]
    starts = sorted(set(starts))
    seasons = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 1 if index + 1 < len(starts) else 12
        points = sorted(draw(st.sets(st.integers(1, 95), max_size=8)))
        minutes = [0, *(p * 15 for p in points)]
        lines = [
            f"{m // 60:02d}:{m % 60:02d} {draw(st.sampled_from(BANDS))}"
            for m in minutes
        ]  # fmt: skip
        weekend = draw(st.booleans())
        seasons.append(
            SeasonForm(
                f"season {index}", f"{start}-{end}", "\n".join(lines), "00:00 valley\n08:00 flat" if weekend else ""
            )
        )
    prices = {band: str(Decimal(draw(st.integers(0, 5_000_000))) / 1_000_000) for band in BANDS}
    charge = draw(st.integers(0, 10_000_000))
    return VersionForm(
        effective_from="2030-01-01T08:00",
        pricing="tou",
        tou_prices=prices,
        seasons=tuple(seasons),
        standing_charges=f"meter fee {Decimal(charge) / 1_000_000} month" if charge else "",
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tou_forms())
def test_a_version_typed_into_the_form_round_trips_through_the_domain(form: VersionForm) -> None:
    base = (EXAMPLES / "commercial-tou.toml").read_text()
    document, tariff, index, problems = tariff_edit.propose_version(base, form, "test")
    assert problems == [] and tariff is not None and index == 2
    assert load_tariff(document).versions[:2] == load_tariff(base).versions
    version = tariff.versions[index]
    assert version.effective_from == dt.datetime(2030, 1, 1, 8, 0)
    assert {b.label: p for b, p in version.tou.prices_micros} == {  # type: ignore[union-attr]
        band: int(Decimal(text) * 1_000_000) for band, text in form.tou_prices.items()
    }
    refilled = tariff_edit.form_of(tariff, index)
    _document, tariff_again, _, problems_again = tariff_edit.propose_version(
        base, VersionForm(**{**_fields(refilled), "effective_from": "2030-01-01T08:00"}), "test"
    )
    assert problems_again == [] and tariff_again is not None
    assert tariff_again.versions[2] == version
    assert all(bar.segments[0].start_minute == 0 and bar.segments[-1].end_minute == 1440
               for bar in tariff_edit.day_bars(tariff, index))  # fmt: skip


def _fields(form: VersionForm) -> dict[str, object]:
    return {name: getattr(form, name) for name in VersionForm.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["flat.toml", "residential-tiered.toml", "tiered-price.json", "dormitory.toml",
                                  "water.toml", "commercial-tou.toml"])  # fmt: skip
def test_every_example_tariff_refills_the_form_and_appends_in_its_own_format(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    tariff = load_tariff(text)
    form = tariff_edit.form_of(tariff, len(tariff.versions) - 1)
    document, appended, index, problems = tariff_edit.propose_version(
        text, VersionForm(**{**_fields(form), "effective_from": "2031-05-01"}), "test"
    )
    assert problems == [] and appended is not None and index == len(tariff.versions)
    assert appended.versions[-1].effective_from == dt.datetime(2031, 5, 1)
    assert appended.versions[:-1] == tariff.versions
    if name.endswith(".json"):
        assert json.loads(document)["versions"][-1]["effective_from"] == "2031-05-01"
    else:
        assert document.startswith(text.rstrip("\n")), "a TOML file keeps its text and comments"


def test_a_toml_file_with_inline_versions_is_rewritten_as_json() -> None:
    text = 'id = "x"\nname = "X"\nversions = [{ effective_from = 2025-01-01, price = "0.5" }]\n'
    document = tariff_edit.with_version(text, {"effective_from": "2026-01-01", "price": "0.6"})
    tariff, problems = parse_tariff(document)
    assert problems == () and tariff is not None
    assert [v.price_micros for v in tariff.versions] == [500_000, 600_000]
    assert json.loads(document)["versions"][0]["effective_from"] == "2025-01-01"


@pytest.mark.parametrize(
    ("path", "field", "message"),
    [
        ("versions[3].effective_from", "effective_from", "bad"),
        ("versions[3].tou.prices.peak", "tou.prices.peak", "bad"),
        ("versions[3].tou.seasons[1].months", "seasons[1].months", "bad"),
        ("versions[3].tou.seasons[0].schedule[2].band", "seasons[0].schedule", "line 5 (band): bad"),
        ("versions[3].tou.seasons[0].weekend_schedule", "seasons[0].weekend_schedule", "bad"),
        ("versions[3].tiers.blocks[1].up_to", "tiers.blocks", "line 2 (up_to): bad"),
        ("versions[3].standing_charges[0].per", "standing_charges", "line 1 (per): bad"),
        ("versions[3].tou.seasons", "seasons", "bad"),
        ("versions[3]", "pricing", "bad"),
        ("versions[2].price", "_form", "versions[2].price: bad"),
        ("cycle.start_day", "_form", "cycle.start_day: bad"),
    ],
)
def test_each_domain_problem_lands_on_the_form_field_that_holds_it(path: str, field: str, message: str) -> None:
    lines = {"seasons[0].schedule": [1, 2, 5], "tiers.blocks": [1, 2]}
    assert tariff_edit.field_of(Problem(path, "bad"), 3, lines) == tariff_edit.FieldProblem(field, message)


def test_malformed_form_lines_are_named_before_the_domain_sees_them() -> None:
    form = VersionForm(
        effective_from="",
        pricing="tou",
        tou_prices={"flat": "1"},
        seasons=(SeasonForm("all", "1-12", "00:00 flat extra"),),
        tier_blocks="1 2 3",
        standing_charges="fee 5",
    )
    built = tariff_edit.build_version(form)
    assert {(p.field, p.message.split(":")[0]) for p in built.problems} == {
        ("effective_from", "required"),
        ("seasons[0].schedule", "line 1"),
        ("tiers.blocks", "line 1"),
        ("standing_charges", "line 1"),
    }
