"""Bulk import from Excel on SQLite and PostgreSQL: every bad row reported, nothing half-imported.

The acceptance test: a 2,000-row sheet with 3 bad rows reports exactly those 3 rows and leaves every table as it
was; the fixed sheet then imports all 2,000 rows.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from openpyxl import Workbook, load_workbook
from sqlalchemy import Connection, Engine, func, select

from powergate.cli import main
from powergate.domain.structure import PaymentChannel
from powergate.services import accounts as service
from powergate.services.importer import COLUMN_KEYS, MAX_ROWS, import_sheet, write_template
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records
from powergate.store.tables import ledger_accounts, meters
from powergate.store.tables_structure import accounts, buildings, floors, meter_assignments, rooms

NOW = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
COUNTED = (buildings, floors, rooms, accounts, meters, meter_assignments, ledger_accounts)


def setup_site(engine: Engine) -> None:
    with engine.begin() as conn:
        org = service.create_organisation(conn, "PARK", "Parkview Property", actor="admin", now=NOW)
        assert isinstance(org, int)
        site = service.create_site(
            conn, org, "Gardens", timezone="Asia/Shanghai", currency="CNY", channels=[PaymentChannel.WECHAT],
            actor="admin", now=NOW,
        )  # fmt: skip
        assert isinstance(site, int)
        metering.add_tariff(conn, "res", "residential", "electricity", "{}", NOW)


def good_row(index: int) -> list[object]:
    """Room ``index``: 10 buildings x 20 floors x 10 rooms; every room has a meter and its own account."""
    building, rest = divmod(index, 200)
    floor, room = divmod(rest, 10)
    return [
        "PARK", "Gardens", f"B{building + 1}", floor + 1, f"{floor + 1}{room + 1:02d}", 35.5 + room, "apartment",
        f"M{index:06d}", "res", f"A-{index:05d}", f"Tenant {index}", f"1380013{index:04d}", f"t{index}@example.com",
    ]  # fmt: skip


def write_sheet(path: Path, rows: Sequence[Sequence[object]]) -> Path:
    book = Workbook(write_only=True)
    sheet = book.create_sheet("import")
    sheet.append(list(COLUMN_KEYS))
    for row in rows:
        sheet.append(list(row))
    book.save(path)
    return path


def counts(conn: Connection) -> dict[str, int]:
    return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in COUNTED}


def test_two_thousand_rows_with_three_bad_ones_report_exactly_those_and_import_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    setup_site(engine)
    rows = [good_row(i) for i in range(2000)]
    rows[10][5] = "12.345"  # area with 3 decimals -> sheet row 12, column F
    rows[999][7] = rows[998][7]  # meter repeated from the row above -> sheet row 1001, column H
    rows[1500][8] = "no-such-tariff"  # unknown tariff, found against the database -> sheet row 1502, column I
    with engine.connect() as conn:
        before = counts(conn)
    started = time.perf_counter()
    report = import_sheet(engine, write_sheet(tmp_path / "bad.xlsx", rows), "operator-1", NOW)
    assert not report.imported
    assert report.rows == 2000
    assert report.bad_rows == [12, 1001, 1502]
    assert [str(p) for p in sorted(report.problems)] == [
        "row 12, F (area_m2): '12.345' has more than 2 decimals (the unit is 0.01 m²)",
        "row 1001, H (meter_id): meter M000998 is on row 1000 already",
        "row 1502, I (tariff_id): no tariff 'no-such-tariff'",
    ]
    with engine.connect() as conn:
        assert counts(conn) == before
    rows[10][5] = 45.5
    rows[999][7] = "M999999"
    rows[1500][8] = "res"
    report = import_sheet(engine, write_sheet(tmp_path / "good.xlsx", rows), "operator-1", NOW)
    elapsed_s = time.perf_counter() - started
    assert report.imported, report.lines()
    assert report.created == {"buildings": 10, "floors": 200, "rooms": 2000, "accounts": 2000, "meters": 2000}
    with engine.connect() as conn:
        after = counts(conn)
        assert after["meter_assignments"] == 2000
        assert after["ledger_accounts"] == before["ledger_accounts"] + 2000
        assert (
            conn.execute(select(rooms.c.area_centi_m2).where(rooms.c.number == "1003")).scalars().all() == [3750] * 10
        )
        assert ledger_store.audit(conn) == []
        assert [r.actor for r in audit_records(conn, action="import_sheet")] == ["operator-1"]
    assert elapsed_s < 30, f"two imports of 2,000 rows took {elapsed_s:.1f} s"


def test_three_bad_rows_of_different_kinds_in_one_sheet_are_all_reported_with_row_and_column(
    engine: Engine, tmp_path: Path
) -> None:
    setup_site(engine)
    rows = [good_row(i) for i in range(50)]
    rows[3][6] = "garage"
    rows[20][11] = "12345"
    rows[20][12] = "not-an-email"
    rows[40][9] = None  # a meter without an account
    report = import_sheet(engine, write_sheet(tmp_path / "bad.xlsx", rows), "operator-1", NOW)
    assert report.bad_rows == [5, 22, 42]
    assert sorted((p.row, p.column) for p in report.problems) == [
        (5, "G (use)"),
        (22, "L (phone)"),
        (22, "M (email)"),
        (42, "J (account_no)"),
    ]
    with engine.connect() as conn:
        assert counts(conn)["rooms"] == 0


def test_several_meters_share_a_room_and_an_account_and_existing_places_are_reused(
    engine: Engine, tmp_path: Path
) -> None:
    setup_site(engine)
    first = good_row(0)
    water = [*first[:7], "W000000", "res", *first[9:]]
    report = import_sheet(engine, write_sheet(tmp_path / "one.xlsx", [first, water]), "op", NOW)
    assert report.imported, report.lines()
    assert report.created == {"buildings": 1, "floors": 1, "rooms": 1, "accounts": 1, "meters": 2}
    second = good_row(1)
    report = import_sheet(engine, write_sheet(tmp_path / "two.xlsx", [second]), "op", NOW)
    assert report.created == {"buildings": 0, "floors": 0, "rooms": 1, "accounts": 1, "meters": 1}
    again = import_sheet(engine, write_sheet(tmp_path / "three.xlsx", [second]), "op", NOW)
    assert [str(p) for p in again.problems] == ["row 2, H (meter_id): meter M000001 exists already"]


def test_a_room_that_exists_with_another_area_is_reported(engine: Engine, tmp_path: Path) -> None:
    setup_site(engine)
    import_sheet(engine, write_sheet(tmp_path / "one.xlsx", [good_row(0)]), "op", NOW)
    changed = good_row(0)
    changed[5], changed[7], changed[9] = 99, "M-new", "A-new"
    report = import_sheet(engine, write_sheet(tmp_path / "two.xlsx", [changed]), "op", NOW)
    assert [p.column for p in report.problems] == ["F (area_m2)"]
    assert "exists with 35.50 m² (apartment); the sheet says 99.00 m²" in report.problems[0].message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ([k for k in COLUMN_KEYS if k != "area_m2"], "row 1, area_m2: required column is missing from the header row"),
        ([*COLUMN_KEYS, "colour"], "row 1, N (colour): unknown column; expected organisation, site"),
    ],
)
def test_a_wrong_header_row_is_reported_before_any_data_row(
    engine: Engine, tmp_path: Path, header: list[str], expected: str
) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(header)
    sheet.append(["x"] * len(header))
    book.save(tmp_path / "header.xlsx")
    report = import_sheet(engine, tmp_path / "header.xlsx", "op", NOW)
    assert str(report.problems[0]).startswith(expected)
    assert report.bad_rows == [1]


def test_a_file_that_is_not_a_workbook_is_reported(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "rooms.xlsx"
    path.write_text("room,area\n101,35\n", encoding="utf-8")
    report = import_sheet(engine, path, "op", NOW)
    assert not report.imported
    assert report.problems[0].row == 0
    assert "not a readable .xlsx workbook" in report.problems[0].message


def test_the_template_has_headers_validations_an_example_and_imports_once_filled(
    engine: Engine, tmp_path: Path
) -> None:
    setup_site(engine)
    path = tmp_path / "template.xlsx"
    write_template(path)
    book = load_workbook(path)
    sheet = book["import"]
    assert [c.value for c in sheet[1]] == list(COLUMN_KEYS)
    assert sheet.max_row == 1
    assert {str(v.sqref) for v in sheet.data_validations.dataValidation} == {
        f"G2:G{MAX_ROWS + 1}",
        f"F2:F{MAX_ROWS + 1}",
        f"J2:J{MAX_ROWS + 1}",
    }
    example = [c.value for c in book["example"][2]]
    assert example[0] == "PARK" or example[0]
    empty = import_sheet(engine, path, "op", NOW)
    assert [str(p) for p in empty.problems] == ["row 2: the sheet has no data rows"]
    example = ["PARK", "Gardens", *example[2:8], "res", *example[9:]]
    sheet.append(example)
    book.save(path)
    report = import_sheet(engine, path, "op", NOW)
    assert report.imported, report.lines()
    assert report.created["meters"] == 1


def test_the_cli_writes_a_template_and_exits_1_on_a_bad_sheet(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_site(engine)
    template = tmp_path / "template.xlsx"
    assert main(["import", "template", str(template)]) == 0
    assert template.exists()
    bad = good_row(0)
    bad[5] = "-3"
    path = write_sheet(tmp_path / "bad.xlsx", [good_row(1), bad])
    assert main(["import", "sheet", "--url", db_url, "--actor", "op", str(path)]) == 1
    out = capsys.readouterr().out
    assert "NOT imported: 1 bad rows of 2" in out
    assert "row 3, F (area_m2)" in out
    good = write_sheet(tmp_path / "good.xlsx", [good_row(1), good_row(2)])
    assert main(["import", "sheet", "--url", db_url, "--actor", "op", str(good)]) == 0
    assert "imported 2 rows" in capsys.readouterr().out
