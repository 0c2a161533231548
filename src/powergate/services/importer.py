"""Bulk import of rooms, meters and accounts from an Excel sheet, all or nothing.

One row of the sheet is one room at a site (organisation code, site name, building, floor, room number, area,
use), optionally with a meter installed in it (meter id, tariff) for an account (account number, name, phone,
e-mail). Buildings, floors, rooms and accounts that do not exist yet are created (accounts pre-staged, to be
opened in one click); rows may repeat a room or an account to put several meters in one room or on one wallet.

Invariants:
- Every row is checked before anything is written, and every problem is reported as (row, column, message):
  all of them, not just the first, with the row number Excel shows and the column letter and name.
- Nothing is half-imported: checks and writes run in ONE transaction, and any problem (found by the checks, or
  by the database's constraints if another writer raced us) rolls it all back.
- A repeated value is reported on the later row only (naming the earlier one), so a sheet with N bad rows
  reports exactly those N rows.
- Bounded: at most ``MAX_ROWS`` data rows, ``MAX_FILE_BYTES`` bytes, ``MAX_COLUMNS`` columns.
- Spreadsheet numbers never become floats in the database: a numeric cell is read back as the shortest decimal
  text Excel would display (35.5 stays "35.5") and parsed exactly; ids typed as numbers keep their digits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openpyxl import Workbook, load_workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import InvalidFileException
from openpyxl.worksheet.datavalidation import DataValidation
from sqlalchemy import Connection, Engine, insert, select, tuple_
from sqlalchemy.exc import IntegrityError

from powergate.domain.ledger import AccountKind, account_kind
from powergate.domain.structure import (
    AccountState,
    FieldError,
    RoomUse,
    account_wallet,
    format_area,
    parse_area,
    parse_code,
    parse_email,
    parse_name,
    parse_phone,
    parse_room_use,
)
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, meters, tariffs
from powergate.store.tables_structure import (
    accounts,
    buildings,
    floors,
    meter_assignments,
    organisations,
    rooms,
    sites,
)

MAX_ROWS = 50_000
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_COLUMNS = 64
SHEET_NAME = "import"
LOOKUP_CHUNK = 500
"""Bound on the values in one ``IN (...)`` lookup."""


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    required: bool
    help: str
    example: str
    width: int = 14


COLUMNS: tuple[Column, ...] = (
    Column("organisation", True, "organisation code (must exist) / 物业公司代码", "PARKVIEW"),
    Column("site", True, "site name within the organisation (must exist) / 项目名称", "Parkview Gardens", 20),
    Column("building", True, "building name; created if new / 楼栋", "B2"),
    Column("floor", True, "floor name; created if new / 楼层", "12"),
    Column("room", True, "room number on the floor; created if new / 房间号", "1203"),
    Column("area_m2", True, "area in m², at most 2 decimals / 面积 (m²)", "86.5"),
    Column("use", True, "apartment, shop, office, dormitory or public_area / 用途", "apartment"),
    Column("meter_id", False, "meter id (new); needs an account and a tariff / 表号", "000000001203", 16),
    Column("tariff_id", False, "tariff id (must exist) for a new meter / 电价方案", "residential-2026"),
    Column("account_no", False, "account number, unique in the organisation / 户号", "B2-1203"),
    Column("account_name", False, "tenant name, required with an account / 户名", "Zhang San", 18),
    Column("phone", False, "mobile or landline / 电话", "13800138000"),
    Column("email", False, "e-mail / 邮箱", "zhang.san@example.com", 24),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)


@dataclass(frozen=True, slots=True, order=True)
class RowProblem:
    row: int
    """The row number Excel shows (the header is row 1); 0 for a problem with the file itself."""
    column: str
    """Column letter and name, e.g. ``F (area_m2)``; empty when the whole row or file is at fault."""
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else "file"
        return f"{where}, {self.column}: {self.message}" if self.column else f"{where}: {self.message}"


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    imported: bool = False
    problems: list[RowProblem] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=dict)
    """Counts of what was written: buildings, floors, rooms, accounts, meters."""

    @property
    def bad_rows(self) -> list[int]:
        return sorted({p.row for p in self.problems})

    def lines(self) -> list[str]:
        if not self.imported:
            head = f"NOT imported: {len(self.bad_rows)} bad rows of {self.rows}; nothing was written"
            return [head, *(str(p) for p in sorted(self.problems))]
        counts = ", ".join(f"{n} {what}" for what, n in self.created.items())
        return [f"imported {self.rows} rows: {counts}"]


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One checked row. Room path and account identity are keys for the cross-row and database checks."""

    row: int
    organisation: str
    site: str
    building: str
    floor: str
    room: str
    area_centi_m2: int
    use: RoomUse
    meter_id: str | None
    tariff_id: str | None
    account_no: str | None
    account_name: str | None
    phone: str | None
    email: str | None

    @property
    def room_key(self) -> tuple[str, str, str, str, str]:
        return (self.organisation, self.site, self.building, self.floor, self.room)

    @property
    def account_key(self) -> tuple[str, str] | None:
        return None if self.account_no is None else (self.organisation, self.account_no)


# --- template --------------------------------------------------------------------------------------------


def write_template(path: str | Path) -> None:
    """Write the downloadable template: the ``import`` sheet, an ``example`` sheet and ``instructions``."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = SHEET_NAME
    _write_headers(sheet)
    _add_validations(sheet)
    example = book.create_sheet("example")
    _write_headers(example)
    example.append([c.example for c in COLUMNS])
    help_sheet = book.create_sheet("instructions")
    help_sheet.append(["column", "required", "meaning"])
    for column in COLUMNS:
        help_sheet.append([column.key, "yes" if column.required else "", column.help])
    help_sheet.append([])
    help_sheet.append(["Fill the 'import' sheet from row 2; the 'example' sheet shows one filled row."])
    help_sheet.append(
        ["Every bad row is reported with its row and column, and nothing is imported until all are fixed."]
    )
    help_sheet.column_dimensions["A"].width = 16
    help_sheet.column_dimensions["C"].width = 70
    book.save(path)


def _write_headers(sheet: Any) -> None:
    sheet.append(list(COLUMN_KEYS))
    for index, column in enumerate(COLUMNS, start=1):
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = column.width
        sheet[f"{letter}1"].font = Font(bold=True)
    sheet.freeze_panes = "A2"


def _add_validations(sheet: Any) -> None:
    last = MAX_ROWS + 1
    uses = DataValidation(
        type="list", formula1='"' + ",".join(u.value for u in RoomUse) + '"', allow_blank=False, showErrorMessage=True
    )
    uses.error = "Choose apartment, shop, office, dormitory or public_area"
    area = DataValidation(type="decimal", operator="greaterThanOrEqual", formula1="0", showErrorMessage=True)
    area.error = "Area in m², a number >= 0 with at most 2 decimals"
    account_no = DataValidation(type="textLength", operator="lessThanOrEqual", formula1="32", showErrorMessage=True)
    account_no.error = "At most 32 letters, digits, '-' or '_'"
    for validation, key in ((uses, "use"), (area, "area_m2"), (account_no, "account_no")):
        letter = get_column_letter(COLUMN_KEYS.index(key) + 1)
        validation.add(f"{letter}2:{letter}{last}")
        sheet.add_data_validation(validation)
    # Ids and phone numbers are text: typed as numbers, Excel would drop leading zeros.
    for key in ("meter_id", "account_no", "phone", "room", "floor"):
        letter = get_column_letter(COLUMN_KEYS.index(key) + 1)
        sheet.column_dimensions[letter].number_format = "@"


# --- import ----------------------------------------------------------------------------------------------


def import_sheet(
    engine: Engine,
    path: str | Path,
    actor: str,
    now: dt.datetime | None = None,
    *,
    organisation: str | None = None,
    dry_run: bool = False,
    reason: str = "bulk import",
) -> ImportReport:
    """Check every row of the sheet at ``path``, then import all of it in one transaction, or nothing.

    ``organisation``: every row must name this organisation code (the console imports into the operator's own).
    ``dry_run``: check and write as usual but roll back: a clean preview has no problems, ``imported`` False and
    ``created`` counting what the import would create. ``reason`` goes to the audit record.
    """
    now = now or dt.datetime.now(dt.UTC)
    report = ImportReport()
    parsed, positions = _read_sheet(Path(path), report)
    if organisation is not None:
        label = _column_label(positions, "organisation")
        report.problems.extend(
            RowProblem(row.row, label, f"{row.organisation!r} is not your organisation {organisation!r}")
            for row in parsed
            if row.organisation != organisation
        )
    if not parsed:
        return report
    with engine.connect() as conn:
        try:
            with conn.begin():
                # Rows that passed the sheet checks are checked against the database too, even when other rows
                # failed: the report names every bad row at once.
                problems, known = _check_against_database(conn, parsed, positions)
                report.problems.extend(problems)
                if report.problems:
                    raise _Rollback
                report.created = _write(conn, parsed, known, now)
                if dry_run:
                    raise _Rollback
                detail = {"file": Path(path).name, "sha256": _digest(Path(path)), "rows": report.rows}
                record_audit(conn, actor, "import_sheet", f"import:{Path(path).name}", reason, detail, now)
        except _Rollback:
            return report
        except IntegrityError as error:
            message = f"another change to the same rooms, accounts or meters collided; retry ({error.orig})"
            report.problems.append(RowProblem(0, "", message))
            return report
    report.imported = True
    return report


class _Rollback(Exception):
    """Leaves the import transaction without committing (problems were found)."""


def _read_sheet(path: Path, report: ImportReport) -> tuple[list[SheetRow], dict[str, int]]:
    """The checked rows and where each column is; problems go to ``report``."""
    problem = _file_problem(path)
    if problem is not None:
        report.problems.append(RowProblem(0, "", problem))
        return [], {}
    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as error:
        report.problems.append(RowProblem(0, "", f"not a readable .xlsx workbook: {error}"))
        return [], {}
    try:
        sheet = book[SHEET_NAME] if SHEET_NAME in book.sheetnames else book.worksheets[0]
        values = sheet.iter_rows(values_only=True, max_col=MAX_COLUMNS)
        positions = _header_positions(next(values, None), report)
        if positions is None:
            return [], {}
        return _parse_rows(values, positions, report), positions
    finally:
        book.close()


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path} does not exist"
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return f"the file is {size} bytes; at most {MAX_FILE_BYTES} are accepted (split the sheet)"
    return None


def _parse_rows(rows: Iterable[tuple[Any, ...]], positions: dict[str, int], report: ImportReport) -> list[SheetRow]:
    parsed: list[SheetRow] = []
    for number, cells in enumerate(rows, start=2):
        if all(_blank(c) for c in cells):
            continue
        report.rows += 1
        if report.rows > MAX_ROWS:
            report.problems.append(RowProblem(number, "", f"more than {MAX_ROWS} rows; split the sheet"))
            return []
        record = {key: (cells[i] if i < len(cells) else None) for key, i in positions.items()}
        row = _parse_row(number, record, positions, report)
        if row is not None:
            parsed.append(row)
    if report.rows == 0:
        report.problems.append(RowProblem(2, "", "the sheet has no data rows"))
    _check_across_rows(parsed, positions, report)
    return parsed


def _header_positions(header: Sequence[Any] | None, report: ImportReport) -> dict[str, int] | None:
    if header is None:
        report.problems.append(
            RowProblem(1, "", f"the sheet is empty; the header row must name: {', '.join(COLUMN_KEYS)}")
        )
        return None
    positions: dict[str, int] = {}
    for index, cell in enumerate(header):
        name = _cell_text(cell).lower()
        if not name:
            continue
        letter = get_column_letter(index + 1)
        if name not in COLUMN_KEYS:
            report.problems.append(
                RowProblem(1, f"{letter} ({name})", f"unknown column; expected {', '.join(COLUMN_KEYS)}")
            )
        elif name in positions:
            report.problems.append(RowProblem(1, f"{letter} ({name})", "this column appears twice"))
        else:
            positions[name] = index
    for column in COLUMNS:
        if column.required and column.key not in positions:
            report.problems.append(RowProblem(1, column.key, "required column is missing from the header row"))
    return None if report.problems else positions


def _parse_row(number: int, record: dict[str, Any], positions: dict[str, int], report: ImportReport) -> SheetRow | None:
    problems: list[RowProblem] = []

    def cell(key: str, parse: Any, *args: Any) -> Any:
        try:
            return parse(_cell_text(record.get(key)), *args)
        except FieldError as error:
            problems.append(RowProblem(number, _column_label(positions, key), error.message))
            return None

    values = {
        "organisation": cell("organisation", parse_code, "organisation"),
        "site": cell("site", parse_name, "site"),
        "building": cell("building", parse_name, "building"),
        "floor": cell("floor", parse_name, "floor"),
        "room": cell("room", parse_name, "room"),
        "area_centi_m2": cell("area_m2", parse_area, "area_m2"),
        "use": cell("use", parse_room_use, "use"),
        "meter_id": cell("meter_id", _optional(parse_code), "meter_id"),
        "tariff_id": cell("tariff_id", _optional(parse_name), "tariff_id"),
        "account_no": cell("account_no", _optional(parse_code), "account_no"),
        "account_name": cell("account_name", _optional(parse_name), "account_name", 120),
        "phone": cell("phone", parse_phone, "phone"),
        "email": cell("email", parse_email, "email"),
    }
    problems.extend(_row_rules(number, values, positions))
    if problems:
        report.problems.extend(problems)
        return None
    return SheetRow(row=number, **values)


def _row_rules(number: int, values: dict[str, Any], positions: dict[str, int]) -> list[RowProblem]:
    """Rules between the cells of one row."""
    problems = []
    has_account = values["account_no"] is not None
    tenant_fields = [k for k in ("meter_id", "account_name", "phone", "email") if values[k] is not None]
    if tenant_fields and not has_account:
        message = f"{', '.join(tenant_fields)} given without an account number"
        problems.append(RowProblem(number, _column_label(positions, "account_no"), message))
    if values["meter_id"] is not None and values["tariff_id"] is None:
        problems.append(RowProblem(number, _column_label(positions, "tariff_id"), "a new meter needs a tariff"))
    if has_account and values["account_name"] is None:
        problems.append(RowProblem(number, _column_label(positions, "account_name"), "required with an account"))
    return problems


def _optional(parse: Any) -> Any:
    def parse_optional(text: str, *args: Any) -> Any:
        return parse(text, *args) if text else None

    return parse_optional


def _check_across_rows(parsed: list[SheetRow], positions: dict[str, int], report: ImportReport) -> None:
    """A meter appears once; a repeated room or account agrees with its first row. Later rows are blamed."""
    first_meter: dict[str, int] = {}
    first_room: dict[tuple[str, ...], SheetRow] = {}
    first_account: dict[tuple[str, str], SheetRow] = {}
    good: list[SheetRow] = []
    for row in parsed:
        problems = _clashes(row, first_meter, first_room, first_account, positions)
        if problems:
            report.problems.extend(problems)
            continue
        # Only good rows become the reference for later ones: one bad row never makes another row bad.
        good.append(row)
        if row.meter_id is not None:
            first_meter[row.meter_id] = row.row
        first_room.setdefault(row.room_key, row)
        if row.account_key is not None:
            first_account.setdefault(row.account_key, row)
    parsed[:] = good


def _clashes(
    row: SheetRow,
    first_meter: dict[str, int],
    first_room: dict[tuple[str, ...], SheetRow],
    first_account: dict[tuple[str, str], SheetRow],
    positions: dict[str, int],
) -> list[RowProblem]:
    problems = []
    seen = first_meter.get(row.meter_id) if row.meter_id is not None else None
    if seen is not None:
        label = _column_label(positions, "meter_id")
        problems.append(RowProblem(row.row, label, f"meter {row.meter_id} is on row {seen} already"))
    room = first_room.get(row.room_key)
    if room is not None and (room.area_centi_m2, room.use) != (row.area_centi_m2, row.use):
        label = _column_label(positions, "area_m2")
        problems.append(RowProblem(row.row, label, f"room {row.room} is on row {room.row} with another area or use"))
    account = first_account.get(row.account_key) if row.account_key is not None else None
    if account is not None and _account_fields(account) != _account_fields(row):
        message = f"account {row.account_no} is on row {account.row} with another site, name, phone or e-mail"
        problems.append(RowProblem(row.row, _column_label(positions, "account_name"), message))
    return problems


def _account_fields(row: SheetRow) -> tuple[object, ...]:
    return (row.site, row.account_name, row.phone, row.email)


# --- checks against the database -------------------------------------------------------------------------


@dataclass(slots=True)
class _Known:
    """What already exists for the rows of the sheet, loaded in bounded lookups."""

    organisations: dict[str, int] = field(default_factory=dict)
    sites: dict[tuple[str, str], tuple[int, str, str]] = field(default_factory=dict)
    """(organisation, site) -> (site id, time zone, currency)."""
    tariffs: set[str] = field(default_factory=set)
    meters: set[str] = field(default_factory=set)
    rooms: dict[tuple[str, ...], tuple[int, int, str]] = field(default_factory=dict)
    """room key -> (room id, area, use)."""
    accounts: dict[tuple[str, str], tuple[int, str, str, str]] = field(default_factory=dict)
    """(organisation, account no) -> (account id, state, site name, name)."""


def _check_against_database(
    conn: Connection, parsed: list[SheetRow], positions: dict[str, int]
) -> tuple[list[RowProblem], _Known]:
    known = _load_known(conn, parsed)
    labels = {key: _column_label(positions, key) for key in COLUMN_KEYS}
    problems: list[RowProblem] = []
    for row in parsed:
        problems.extend(_row_against(row, known, labels))
    return problems, known


def _row_against(row: SheetRow, known: _Known, labels: dict[str, str]) -> list[RowProblem]:
    if row.organisation not in known.organisations:
        return [RowProblem(row.row, labels["organisation"], f"no organisation {row.organisation!r}")]
    if (row.organisation, row.site) not in known.sites:
        return [RowProblem(row.row, labels["site"], f"organisation {row.organisation} has no site {row.site!r}")]
    problems = []
    if row.tariff_id is not None and row.tariff_id not in known.tariffs:
        problems.append(RowProblem(row.row, labels["tariff_id"], f"no tariff {row.tariff_id!r}"))
    if row.meter_id is not None and row.meter_id in known.meters:
        problems.append(RowProblem(row.row, labels["meter_id"], f"meter {row.meter_id} exists already"))
    room = known.rooms.get(row.room_key)
    if room is not None and (room[1], room[2]) != (row.area_centi_m2, row.use.value):
        problems.append(
            RowProblem(
                row.row,
                labels["area_m2"],
                f"room {row.room} exists with {format_area(room[1])} m² ({room[2]}); the sheet says "
                f"{format_area(row.area_centi_m2)} m² ({row.use.value})",
            )
        )
    account = known.accounts.get(row.account_key) if row.account_key else None
    if account is not None:
        _, state, site_name, name = account
        if state == AccountState.CLOSED.value:
            problems.append(RowProblem(row.row, labels["account_no"], f"account {row.account_no} is closed"))
        elif site_name != row.site:
            problems.append(RowProblem(row.row, labels["site"], f"account {row.account_no} is at site {site_name!r}"))
        elif name != row.account_name:
            problems.append(RowProblem(row.row, labels["account_name"], f"account {row.account_no} is named {name!r}"))
    return problems


def _load_known(conn: Connection, parsed: list[SheetRow]) -> _Known:
    known = _Known()
    codes = sorted({r.organisation for r in parsed})
    for chunk in _chunks(codes):
        known.organisations.update(
            (str(c), int(i))
            for c, i in conn.execute(
                select(organisations.c.code, organisations.c.id).where(organisations.c.code.in_(chunk))
            )
        )
    org_by_id = {i: c for c, i in known.organisations.items()}
    site_rows = conn.execute(
        select(sites.c.organisation_id, sites.c.name, sites.c.id, sites.c.timezone, sites.c.currency).where(
            sites.c.organisation_id.in_(list(org_by_id))
        )
    )
    for org_id, name, site_id, timezone, currency in site_rows:
        known.sites[(org_by_id[int(org_id)], str(name))] = (int(site_id), str(timezone), str(currency))
    wanted_tariffs = sorted({r.tariff_id for r in parsed if r.tariff_id})
    for chunk in _chunks(wanted_tariffs):
        known.tariffs.update(str(t) for (t,) in conn.execute(select(tariffs.c.id).where(tariffs.c.id.in_(chunk))))
    wanted_meters = sorted({r.meter_id for r in parsed if r.meter_id})
    for chunk in _chunks(wanted_meters):
        known.meters.update(str(m) for (m,) in conn.execute(select(meters.c.id).where(meters.c.id.in_(chunk))))
    _load_rooms(conn, known)
    _load_accounts(conn, parsed, known, org_by_id)
    return known


def _load_rooms(conn: Connection, known: _Known) -> None:
    names = {site_id: key for key, (site_id, _, _) in known.sites.items()}
    query = (
        select(
            buildings.c.site_id,
            buildings.c.name,
            floors.c.name,
            rooms.c.number,
            rooms.c.id,
            rooms.c.area_centi_m2,
            rooms.c.use,
        )
        .join(floors, floors.c.building_id == buildings.c.id)
        .join(rooms, rooms.c.floor_id == floors.c.id)
    )
    for chunk in _chunks(sorted(names)):
        for site_id, building, floor, number, room_id, area, use in conn.execute(
            query.where(buildings.c.site_id.in_(chunk))
        ):
            organisation, site = names[int(site_id)]
            known.rooms[(organisation, site, str(building), str(floor), str(number))] = (
                int(room_id),
                int(area),
                str(use),
            )


def _load_accounts(conn: Connection, parsed: list[SheetRow], known: _Known, org_by_id: dict[int, str]) -> None:
    site_names = {site_id: name for (_, name), (site_id, _, _) in known.sites.items()}
    keys = {r.account_key for r in parsed if r.account_key is not None}
    wanted = sorted((known.organisations[o], a) for o, a in keys if o in known.organisations)
    query = select(
        accounts.c.organisation_id,
        accounts.c.account_no,
        accounts.c.id,
        accounts.c.state,
        accounts.c.site_id,
        accounts.c.name,
    )
    for chunk in _chunks(wanted):
        condition = tuple_(accounts.c.organisation_id, accounts.c.account_no).in_(chunk)
        for org_id, account_no, account_id, state, site_id, name in conn.execute(query.where(condition)):
            site = site_names.get(int(site_id), f"#{site_id}")
            known.accounts[(org_by_id[int(org_id)], str(account_no))] = (int(account_id), str(state), site, str(name))


# --- writing ---------------------------------------------------------------------------------------------


def _write(conn: Connection, parsed: list[SheetRow], known: _Known, now: dt.datetime) -> dict[str, int]:
    """Create what is missing, in dependency order; the caller's transaction makes it all or nothing."""
    created = {"buildings": 0, "floors": 0, "rooms": 0, "accounts": 0, "meters": 0}
    room_ids = _write_rooms(conn, parsed, known, created)
    account_ids = _write_accounts(conn, parsed, known, now, created)
    wallet_ids: dict[int, int] = {}
    for chunk in _chunks(sorted(set(account_ids.values()))):
        query = select(accounts.c.id, accounts.c.wallet_account_id).where(accounts.c.id.in_(chunk))
        wallet_ids.update((int(a), int(w)) for a, w in conn.execute(query))
    meter_rows = []
    assignment_rows = []
    for row in parsed:
        if row.meter_id is None:
            continue
        assert row.account_key is not None, "a meter row without an account is refused by _row_rules"
        account_id = account_ids[row.account_key]
        _, timezone, _ = known.sites[(row.organisation, row.site)]
        meter_rows.append(
            {
                "id": row.meter_id,
                "wallet_account_id": wallet_ids[account_id],
                "tariff_id": row.tariff_id,
                "timezone": timezone,
                "created_at": now,
            }
        )
        assignment_rows.append(
            {"meter_id": row.meter_id, "room_id": room_ids[row.room_key], "account_id": account_id, "valid_from": now}
        )
    if meter_rows:
        conn.execute(insert(meters), meter_rows)
        conn.execute(insert(meter_assignments), assignment_rows)
    created["meters"] = len(meter_rows)
    return created


def _write_rooms(
    conn: Connection, parsed: list[SheetRow], known: _Known, created: dict[str, int]
) -> dict[tuple[str, ...], int]:
    room_ids = {key: value[0] for key, value in known.rooms.items()}
    building_ids: dict[tuple[str, str, str], int] = {}
    floor_ids: dict[tuple[str, str, str, str], int] = {}
    new_rooms: dict[tuple[int, str], tuple[tuple[str, ...], SheetRow]] = {}
    """(floor id, room number) -> (room key, its first row)."""
    for row in parsed:
        if row.room_key in room_ids:
            continue
        site_id = known.sites[(row.organisation, row.site)][0]
        building_key = (row.organisation, row.site, row.building)
        if building_key not in building_ids:
            building_ids[building_key] = _get_or_create(
                conn, buildings, {"site_id": site_id, "name": row.building}, created, "buildings"
            )
        floor_key = (*building_key, row.floor)
        if floor_key not in floor_ids:
            floor_ids[floor_key] = _get_or_create(
                conn, floors, {"building_id": building_ids[building_key], "name": row.floor}, created, "floors"
            )
        room_ids[row.room_key] = -1  # placeholder until the batch insert below assigns ids
        new_rooms[(floor_ids[floor_key], row.room)] = (row.room_key, row)
    if new_rooms:
        values = [
            {"floor_id": f, "number": n, "area_centi_m2": r.area_centi_m2, "use": r.use.value}
            for (f, n), (_, r) in new_rooms.items()
        ]
        conn.execute(insert(rooms), values)
        for chunk in _chunks(sorted({floor_id for floor_id, _ in new_rooms})):
            query = select(rooms.c.floor_id, rooms.c.number, rooms.c.id).where(rooms.c.floor_id.in_(chunk))
            for floor_id, number, room_id in conn.execute(query):
                found = new_rooms.get((int(floor_id), str(number)))
                if found is not None:
                    room_ids[found[0]] = int(room_id)
    assert all(room_id > 0 for room_id in room_ids.values()), "a new room was not found after its insert"
    created["rooms"] = len(new_rooms)
    return room_ids


def _get_or_create(conn: Connection, table: Any, values: dict[str, object], created: dict[str, int], what: str) -> int:
    condition = [table.c[k] == v for k, v in values.items()]
    existing = conn.execute(select(table.c.id).where(*condition)).scalar()
    if existing is not None:
        return int(existing)
    created[what] += 1
    result = conn.execute(insert(table).values(**values))
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def _write_accounts(
    conn: Connection, parsed: list[SheetRow], known: _Known, now: dt.datetime, created: dict[str, int]
) -> dict[tuple[str, str], int]:
    account_ids = {key: value[0] for key, value in known.accounts.items()}
    new_rows: list[dict[str, object]] = []
    staged: set[tuple[str, str]] = set()
    for row in parsed:
        key = row.account_key
        if key is None or key in account_ids or key in staged:
            continue
        staged.add(key)
        site_id, _, currency = known.sites[(row.organisation, row.site)]
        wallet = account_wallet(row.organisation, key[1])
        new_rows.append(
            {
                "organisation_id": known.organisations[row.organisation],
                "site_id": site_id,
                "account_no": key[1],
                "name": row.account_name,
                "phone": row.phone,
                "email": row.email,
                "state": AccountState.PRE_STAGED.value,
                "wallet": wallet,
                "currency": currency,
                "created_at": now,
            }
        )
    if new_rows:
        wallet_ids = _ensure_wallets(conn, [(str(r["wallet"]), str(r["currency"])) for r in new_rows], now)
        for new_row in new_rows:
            new_row["wallet_account_id"] = wallet_ids[str(new_row.pop("wallet"))]
            del new_row["currency"]
        conn.execute(insert(accounts), new_rows)
        org_by_id = {i: c for c, i in known.organisations.items()}
        for chunk in _chunks(sorted(staged)):
            ids = [(known.organisations[o], a) for o, a in chunk]
            query = select(accounts.c.organisation_id, accounts.c.account_no, accounts.c.id).where(
                tuple_(accounts.c.organisation_id, accounts.c.account_no).in_(ids)
            )
            for org_id, account_no, account_id in conn.execute(query):
                account_ids[(org_by_id[int(org_id)], str(account_no))] = int(account_id)
    created["accounts"] = len(new_rows)
    return account_ids


def _ensure_wallets(conn: Connection, wallets: list[tuple[str, str]], now: dt.datetime) -> dict[str, int]:
    """Ledger ids of the wallets (code, currency), the missing ones created in one statement.

    ``store.ledger.ensure_account`` does this one account at a time (a lookup, a savepoint and an insert each),
    which is most of the time of a 2,000-row import. A wallet created concurrently by someone else surfaces as
    an ``IntegrityError`` that rolls back the whole import, which is then reported as a collision to retry.
    """
    codes = [code for code, _ in wallets]
    found: dict[str, int] = {}
    for chunk in _chunks(codes):
        query = select(ledger_accounts.c.code, ledger_accounts.c.id).where(ledger_accounts.c.code.in_(chunk))
        found.update((str(code), int(account_id)) for code, account_id in conn.execute(query))
    missing = [
        {"code": code, "kind": AccountKind.WALLET.value, "currency": currency, "created_at": now}
        for code, currency in wallets
        if code not in found
    ]
    if missing:
        assert all(account_kind(str(row["code"])) is AccountKind.WALLET for row in missing)
        conn.execute(insert(ledger_accounts), missing)
        for chunk in _chunks([str(row["code"]) for row in missing]):
            query = select(ledger_accounts.c.code, ledger_accounts.c.id).where(ledger_accounts.c.code.in_(chunk))
            found.update((str(code), int(account_id)) for code, account_id in conn.execute(query))
    return found


# --- cells -----------------------------------------------------------------------------------------------


def _cell_text(value: Any) -> str:
    """A cell as text, exactly as the user typed it: numbers without float noise, integers without '.0'."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        # repr gives the shortest text that reads back as this float: what the user typed in the cell.
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value).strip()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _column_label(positions: dict[str, int], key: str) -> str:
    index = positions.get(key)
    return key if index is None else f"{get_column_letter(index + 1)} ({key})"


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()
