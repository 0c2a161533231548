"""Reports of a site: the monthly comprehensive report, year-on-year, energy and income by period; Excel.

The monthly comprehensive report (月度综合报表) has one line per account of the site: opening balance,
recharges, energy deductions, fees (standing charges), refunds, adjustments and the closing balance, all summed
from the ledger by event time in the site's month; and the month's energy and cost split over the TOU bands,
summed from the daily freezes of the account's wallet. Every figure is an integer (micros, Wh); rounding happens
only when a figure is shown (``format_money``) and Excel cells hold exact decimals.

Invariants:
- A line ties out exactly: opening + recharges - deductions - fees - refunds + adjustments = closing. Opening and
  closing are sums of every posting before the month's start and end, the flows are sums of the postings within,
  so the identity holds by construction; ``MonthlyReport.problems`` says so if it ever does not.
- Totals are sums of the lines (Python integers), so the report adds up and equals the ledger over its wallets.
- Organisation scoping is part of every query: a site of another organisation is ``None`` (the caller answers
  404), income and energy only count wallets of the organisation's accounts.
- Bounded: wallets are read in chunks of ``CHUNK``; a query that would read more than ``MAX_ROWS`` raw rows raises
  ``ReportTooLarge`` (narrow the dates).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from sqlalchemy import ColumnElement, Connection, and_, case, func, select

from powergate.domain.money import MICROS_PER_UNIT
from powergate.services import finance
from powergate.services.finance import IncomeRow, ReportTooLarge
from powergate.services.freeze import local_midnight, month_bounds
from powergate.services.queries import Scope
from powergate.store.tables import ledger_entries, ledger_postings
from powergate.store.tables_freeze import daily_freezes
from powergate.store.tables_structure import accounts, sites

MAX_ROWS = 200_000
CHUNK = 500
BANDS = ("sharp", "peak", "flat", "valley")
MAX_SPAN_DAYS = 3 * 366 + 1
"""Energy and income reports cover at most about three years (a wider request is a typo)."""


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"
    YEAR = "year"


_PERIOD_FORMATS = {Period.DAY: "%Y-%m-%d", Period.MONTH: "%Y-%m", Period.YEAR: "%Y"}


@dataclass(frozen=True, slots=True)
class SiteInfo:
    id: int
    name: str
    timezone: str
    currency: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def organisation_sites(conn: Connection, organisation_id: int) -> list[SiteInfo]:
    query = (
        select(sites.c.id, sites.c.name, sites.c.timezone, sites.c.currency)
        .where(sites.c.organisation_id == organisation_id)
        .order_by(sites.c.name)
    )
    return [SiteInfo(int(r.id), str(r.name), str(r.timezone), str(r.currency)) for r in conn.execute(query)]


def site_of(conn: Connection, organisation_id: int, site_id: int) -> SiteInfo | None:
    """The site if it belongs to the organisation, else ``None`` (answer 404: ids do not leak)."""
    return next((s for s in organisation_sites(conn, organisation_id) if s.id == site_id), None)


# --- the monthly comprehensive report --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountMonth:
    """One account's month: ledger flows (micros) and the freezes' energy and cost per TOU band."""

    account_id: int
    account_no: str
    name: str
    state: str
    opening_micros: int
    recharges_micros: int
    deductions_micros: int
    """Energy deductions (entry kind ``deduction``), positive when money left the wallet."""
    fees_micros: int
    """Standing charges and other fees (entry kind ``standing_charge``), positive when charged."""
    refunds_micros: int
    adjustments_micros: int
    """Adjustments and reversals, signed as they moved the wallet."""
    closing_micros: int
    energy_wh: int = 0
    bands_wh: tuple[int, int, int, int] = (0, 0, 0, 0)
    cost_micros: int = 0
    band_costs_micros: tuple[int, int, int, int] = (0, 0, 0, 0)
    frozen_days: int = 0
    bands_complete: bool = True
    """False when some frozen day had no band split (a total-only meter): band figures cover only the rest."""
    estimated: bool = False

    @property
    def ties_out(self) -> bool:
        flows = (
            self.recharges_micros
            - self.deductions_micros
            - self.fees_micros
            - self.refunds_micros
            + self.adjustments_micros
        )
        return self.opening_micros + flows == self.closing_micros


MONEY_FIELDS = (
    "opening_micros",
    "recharges_micros",
    "deductions_micros",
    "fees_micros",
    "refunds_micros",
    "adjustments_micros",
    "closing_micros",
    "cost_micros",
)


@dataclass(slots=True)
class MonthlyReport:
    site: SiteInfo
    month: dt.date
    lines: list[AccountMonth] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(getattr(line, name)) for line in self.lines)

    @property
    def bands_wh(self) -> tuple[int, int, int, int]:
        values = [sum(line.bands_wh[i] for line in self.lines) for i in range(4)]
        return values[0], values[1], values[2], values[3]

    @property
    def band_costs_micros(self) -> tuple[int, int, int, int]:
        values = [sum(line.band_costs_micros[i] for line in self.lines) for i in range(4)]
        return values[0], values[1], values[2], values[3]

    @property
    def problems(self) -> list[str]:
        return [f"account {line.account_no}: does not tie out" for line in self.lines if not line.ties_out]


def monthly_report(conn: Connection, organisation_id: int, site_id: int, month: dt.date) -> MonthlyReport | None:
    """The month's report of the site (``None``: no such site in the organisation)."""
    site = site_of(conn, organisation_id, site_id)
    if site is None:
        return None
    first = month.replace(day=1)
    start, end = month_bounds(first, site.zone)
    last_day = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    rows = conn.execute(
        select(accounts.c.id, accounts.c.account_no, accounts.c.name, accounts.c.state, accounts.c.wallet_account_id)
        .where(
            accounts.c.organisation_id == organisation_id,
            accounts.c.site_id == site_id,
            accounts.c.created_at < end,
        )
        .order_by(accounts.c.account_no)
    ).all()
    wallets = [int(r.wallet_account_id) for r in rows]
    flows = _ledger_flows(conn, wallets, start, end)
    usage = _freeze_usage(conn, wallets, first, last_day)
    report = MonthlyReport(site, first)
    for r in rows:
        wallet = int(r.wallet_account_id)
        opening, recharged, deducted, fees, refunded, adjusted, closing = flows.get(wallet, (0,) * 7)
        used = usage.get(wallet)
        line = AccountMonth(
            int(r.id),
            str(r.account_no),
            str(r.name),
            str(r.state),
            opening,
            recharged,
            -deducted,
            -fees,
            -refunded,
            adjusted,
            closing,
        )
        if used is not None:
            line = _with_usage(line, used)
        silent = not any((opening, recharged, deducted, fees, refunded, adjusted, closing))
        if r.state == "closed" and silent and used is None:
            continue  # closed and settled before the month, silent in it
        report.lines.append(line)
    return report


def _kind_sum(kinds: tuple[str, ...], start: dt.datetime, end: dt.datetime) -> ColumnElement[Any]:
    e = ledger_entries.c
    inside = and_(e.kind.in_(kinds), e.event_at >= start, e.event_at < end)
    return func.coalesce(func.sum(case((inside, ledger_postings.c.amount_micros), else_=0)), 0)


def _ledger_flows(
    conn: Connection, wallets: Sequence[int], start: dt.datetime, end: dt.datetime
) -> dict[int, tuple[int, int, int, int, int, int, int]]:
    """wallet -> (opening, recharges, deductions, fees, refunds, adjustments, closing), signed as posted."""
    e, p = ledger_entries.c, ledger_postings.c
    columns = [
        func.coalesce(func.sum(case((e.event_at < start, p.amount_micros), else_=0)), 0),
        _kind_sum(("recharge",), start, end),
        _kind_sum(("deduction",), start, end),
        _kind_sum(("standing_charge",), start, end),
        _kind_sum(("refund",), start, end),
        _kind_sum(("adjustment", "reversal"), start, end),
        func.coalesce(func.sum(case((e.event_at < end, p.amount_micros), else_=0)), 0),
    ]
    found: dict[int, tuple[int, int, int, int, int, int, int]] = {}
    for chunk in _chunks(wallets):
        query = (
            select(p.account_id, *columns)
            .join(ledger_entries, ledger_entries.c.id == p.entry_id)
            .where(p.account_id.in_(chunk), e.event_at < end)
            .group_by(p.account_id)
        )
        for row in conn.execute(query):
            values = [int(v) for v in row[1:]]
            found[int(row[0])] = (values[0], values[1], values[2], values[3], values[4], values[5], values[6])
    return found


@dataclass(frozen=True, slots=True)
class _Usage:
    days: int
    banded: int
    estimated: bool
    energy_wh: int
    bands_wh: tuple[int, int, int, int]
    cost_micros: int
    band_costs_micros: tuple[int, int, int, int]


def _freeze_usage(conn: Connection, wallets: Sequence[int], first: dt.date, last: dt.date) -> dict[int, _Usage]:
    d = daily_freezes.c
    sums = [func.coalesce(func.sum(d[f"{b}_energy_wh"]), 0) for b in BANDS]
    costs = [func.coalesce(func.sum(d[f"{b}_cost_micros"]), 0) for b in BANDS]
    found: dict[int, _Usage] = {}
    for chunk in _chunks(wallets):
        query = (
            select(
                d.wallet_account_id,
                func.count(),
                func.count(d.sharp_cost_micros),
                func.max(case((d.estimated, 1), else_=0)),
                func.coalesce(func.sum(d.energy_wh), 0),
                func.coalesce(func.sum(d.cost_micros), 0),
                *sums,
                *costs,
            )
            .where(d.wallet_account_id.in_(chunk), d.day >= first, d.day <= last)
            .group_by(d.wallet_account_id)
        )
        for row in conn.execute(query):
            values = [int(v) for v in row[6:14]]
            found[int(row[0])] = _Usage(
                int(row[1]),
                int(row[2]),
                bool(row[3]),
                int(row[4]),
                (values[0], values[1], values[2], values[3]),
                int(row[5]),
                (values[4], values[5], values[6], values[7]),
            )
    return found


def _with_usage(line: AccountMonth, used: _Usage) -> AccountMonth:
    return AccountMonth(
        line.account_id,
        line.account_no,
        line.name,
        line.state,
        line.opening_micros,
        line.recharges_micros,
        line.deductions_micros,
        line.fees_micros,
        line.refunds_micros,
        line.adjustments_micros,
        line.closing_micros,
        used.energy_wh,
        used.bands_wh,
        used.cost_micros,
        used.band_costs_micros,
        used.days,
        used.banded == used.days,
        used.estimated,
    )


# --- energy by day / month / year ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnergyRow:
    period: str
    energy_wh: int
    bands_wh: tuple[int, int, int, int]
    cost_micros: int
    meter_days: int


def _site_wallets(organisation_id: int, site_id: int | None) -> Any:
    query = select(accounts.c.wallet_account_id).where(accounts.c.organisation_id == organisation_id)
    if site_id is not None:
        query = query.where(accounts.c.site_id == site_id)
    return query


def energy_by(
    conn: Connection, organisation_id: int, site_id: int | None, period: Period, first: dt.date, last: dt.date
) -> list[EnergyRow]:
    """Frozen energy, its band split and cost per local day / month / year in [first, last] (site-local days)."""
    _check_span(first, last)
    d = daily_freezes.c
    query = (
        select(
            d.day,
            func.sum(d.energy_wh),
            *[func.coalesce(func.sum(d[f"{b}_energy_wh"]), 0) for b in BANDS],
            func.sum(d.cost_micros),
            func.count(),
        )
        .where(d.day >= first, d.day <= last, d.wallet_account_id.in_(_site_wallets(organisation_id, site_id)))
        .group_by(d.day)
        .order_by(d.day)
    )
    buckets: dict[str, list[int]] = {}
    for row in conn.execute(query):
        day = row[0] if isinstance(row[0], dt.date) else dt.date.fromisoformat(str(row[0]))
        cell = buckets.setdefault(day.strftime(_PERIOD_FORMATS[period]), [0] * 7)
        for index, value in enumerate(row[1:]):
            cell[index] += int(value or 0)
    return [EnergyRow(key, v[0], (v[1], v[2], v[3], v[4]), v[5], v[6]) for key, v in sorted(buckets.items())]


# --- income by day / month / year and channel -------------------------------------------------------------


def income_by(
    conn: Connection,
    organisation_id: int,
    site_id: int | None,
    period: Period,
    first: dt.date,
    last: dt.date,
    zone: ZoneInfo,
    channel: str | None = None,
) -> list[IncomeRow]:
    """Payments and refunds of the organisation's wallets per local period and channel, integer fen: the income
    report of ``powergate.services.finance.income`` for the site-local days [first, last], scoped to the
    organisation (and a site: the site of the paying wallet's account, as in the order list)."""
    _check_span(first, last)
    since, until = local_midnight(first, zone), local_midnight(last + dt.timedelta(days=1), zone)
    scope, by = Scope(organisation_id), finance.Period(period.value)
    return finance.income(conn, scope, by, since, until, zone, site_id, channel)


def _check_span(first: dt.date, last: dt.date) -> None:
    if last < first:
        raise ValueError(f"to: {last.isoformat()} is before from: {first.isoformat()}")
    if (last - first).days > MAX_SPAN_DAYS:
        raise ValueError(f"to: at most {MAX_SPAN_DAYS} days after from")


# --- year on year ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class YearOnYearRow:
    month: int
    energy_wh: int
    previous_energy_wh: int
    cost_micros: int
    previous_cost_micros: int
    income_fen: int
    previous_income_fen: int

    @staticmethod
    def change_permille(now: int, before: int) -> int | None:
        """Change against last year in per mille (integer, rounded half away from zero); None when before is 0."""
        if before == 0:
            return None
        numerator = (now - before) * 1000
        quotient, remainder = divmod(abs(numerator), abs(before))
        if 2 * remainder >= abs(before):
            quotient += 1
        return quotient if (numerator >= 0) == (before > 0) else -quotient


def year_on_year(conn: Connection, organisation_id: int, site: SiteInfo | None, year: int) -> list[YearOnYearRow]:
    """Per month of ``year``: frozen energy, cost and net income against the same month a year earlier."""
    zone = site.zone if site is not None else ZoneInfo("Asia/Shanghai")
    site_id = site.id if site is not None else None
    first, last = dt.date(year - 1, 1, 1), dt.date(year, 12, 31)
    energy = {row.period: row for row in energy_by(conn, organisation_id, site_id, Period.MONTH, first, last)}
    income: dict[str, int] = {}
    for row in income_by(conn, organisation_id, site_id, Period.MONTH, first, last, zone):
        income[row.period] = income.get(row.period, 0) + row.net_fen
    lines = []
    for month in range(1, 13):
        now_key, before_key = f"{year:04d}-{month:02d}", f"{year - 1:04d}-{month:02d}"
        now_row, before_row = energy.get(now_key), energy.get(before_key)
        lines.append(
            YearOnYearRow(
                month,
                now_row.energy_wh if now_row else 0,
                before_row.energy_wh if before_row else 0,
                now_row.cost_micros if now_row else 0,
                before_row.cost_micros if before_row else 0,
                income.get(now_key, 0),
                income.get(before_key, 0),
            )
        )
    return lines


# --- Excel -------------------------------------------------------------------------------------------------

MONEY_FORMAT = "#,##0.00"
ENERGY_FORMAT = "#,##0.000"
HEADERS: dict[str, tuple[str, str]] = {
    "account_no": ("Account", "户号"),
    "name": ("Name", "户名"),
    "state": ("State", "状态"),
    "opening": ("Opening balance (yuan)", "期初余额 (元)"),
    "recharges": ("Recharges (yuan)", "充值 (元)"),
    "energy": ("Energy (kWh)", "用电量 (kWh)"),
    "sharp_kwh": ("Sharp (kWh)", "尖 (kWh)"),
    "peak_kwh": ("Peak (kWh)", "峰 (kWh)"),
    "flat_kwh": ("Flat (kWh)", "平 (kWh)"),
    "valley_kwh": ("Valley (kWh)", "谷 (kWh)"),
    "sharp_cost": ("Sharp cost (yuan)", "尖电费 (元)"),
    "peak_cost": ("Peak cost (yuan)", "峰电费 (元)"),
    "flat_cost": ("Flat cost (yuan)", "平电费 (元)"),
    "valley_cost": ("Valley cost (yuan)", "谷电费 (元)"),
    "cost": ("Energy cost, frozen (yuan)", "电费 (冻结, 元)"),
    "deductions": ("Deductions (yuan)", "扣费 (元)"),
    "fees": ("Fees (yuan)", "其他费用 (元)"),
    "refunds": ("Refunds (yuan)", "退费 (元)"),
    "adjustments": ("Adjustments (yuan)", "调整 (元)"),
    "closing": ("Closing balance (yuan)", "期末余额 (元)"),
    "total": ("Total", "合计"),
    "period": ("Period", "期间"),
    "channel": ("Channel", "渠道"),
    "payments": ("Payments", "笔数"),
    "income": ("Income (yuan)", "收入 (元)"),
    "refund_count": ("Refunds", "退款笔数"),
    "refunds_fen": ("Refunds (yuan)", "退款 (元)"),
    "net": ("Net (yuan)", "净收入 (元)"),
    "meter_days": ("Meter-days frozen", "冻结表日数"),
    "month": ("Month", "月份"),
    "energy_now": ("Energy this year (kWh)", "本年用电 (kWh)"),
    "energy_before": ("Energy last year (kWh)", "去年同期用电 (kWh)"),
    "energy_change": ("Energy change (%)", "用电同比 (%)"),
    "cost_now": ("Cost this year (yuan)", "本年电费 (元)"),
    "cost_before": ("Cost last year (yuan)", "去年同期电费 (元)"),
    "income_now": ("Net income this year (yuan)", "本年净收入 (元)"),
    "income_before": ("Net income last year (yuan)", "去年同期净收入 (元)"),
    "site": ("Site", "项目"),
    "timezone": ("Time zone", "时区"),
}


def header(key: str, lang: str) -> str:
    english, chinese = HEADERS[key]
    return chinese if lang == "zh-CN" else english


def yuan_of_micros(amount_micros: int) -> Decimal:
    """Exact decimal yuan (no rounding: Excel shows two places by the cell format)."""
    return Decimal(amount_micros) / MICROS_PER_UNIT


def yuan_of_fen(amount_fen: int) -> Decimal:
    return Decimal(amount_fen).scaleb(-2)


def kwh(energy_wh: int) -> Decimal:
    return Decimal(energy_wh).scaleb(-3)


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    value: Callable[[Any], Any]
    number_format: str | None = None


def _workbook(title: str, preface: Sequence[tuple[str, str]], columns: Sequence[Column], rows: Iterable[Any],
              total: Sequence[Any] | None, lang: str) -> bytes:  # fmt: skip
    """One sheet: optional preface lines (label, value), a blank line, the bold header, the rows, a bold totals
    row. Written in openpyxl's write-only mode (rows streamed, formats per cell): several times faster for the
    thousands of lines of a large site."""
    book = Workbook(write_only=True)
    sheet = book.create_sheet(title[:31])
    for index, column in enumerate(columns, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = max(12, len(header(column.key, lang)) + 2)
    header_row = len(preface) + 2 if preface else 1
    sheet.freeze_panes = f"A{header_row + 1}"
    for label, value in preface:
        sheet.append([label, value])
    if preface:
        sheet.append([])
    bold = Font(bold=True)
    sheet.append([_cell(sheet, header(c.key, lang), None, bold) for c in columns])
    formats = [c.number_format for c in columns]
    for row in rows:
        sheet.append([_cell(sheet, c.value(row), fmt) for c, fmt in zip(columns, formats, strict=True)])
    if total is not None:
        sheet.append([_cell(sheet, value, fmt, bold) for value, fmt in zip(total, formats, strict=True)])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _cell(sheet: Any, value: Any, number_format: str | None, font: Font | None = None) -> Any:
    if number_format is None and font is None:
        return value
    cell = WriteOnlyCell(sheet, value=value)
    if number_format is not None:
        cell.number_format = number_format
    if font is not None:
        cell.font = font
    return cell


def _money_column(key: str, attribute: str) -> Column:
    return Column(key, lambda line: yuan_of_micros(getattr(line, attribute)), MONEY_FORMAT)


def monthly_columns() -> list[Column]:
    columns = [
        Column("account_no", lambda line: line.account_no),
        Column("name", lambda line: line.name),
        Column("state", lambda line: line.state),
        _money_column("opening", "opening_micros"),
        _money_column("recharges", "recharges_micros"),
        Column("energy", lambda line: kwh(line.energy_wh), ENERGY_FORMAT),
    ]
    for index, band in enumerate(BANDS):
        columns.append(Column(f"{band}_kwh", _band_energy(index), ENERGY_FORMAT))
    for index, band in enumerate(BANDS):
        columns.append(Column(f"{band}_cost", _band_cost(index), MONEY_FORMAT))
    columns += [
        _money_column("cost", "cost_micros"),
        _money_column("deductions", "deductions_micros"),
        _money_column("fees", "fees_micros"),
        _money_column("refunds", "refunds_micros"),
        _money_column("adjustments", "adjustments_micros"),
        _money_column("closing", "closing_micros"),
    ]
    return columns


def _band_energy(index: int) -> Callable[[Any], Decimal]:
    return lambda line: kwh(line.bands_wh[index])


def _band_cost(index: int) -> Callable[[Any], Decimal]:
    return lambda line: yuan_of_micros(line.band_costs_micros[index])


def monthly_xlsx(report: MonthlyReport, lang: str) -> bytes:
    """The monthly report as a workbook: site and month, one row per account, a totals row (exact sums)."""
    columns = monthly_columns()
    total_line = AccountMonth(
        account_id=0,
        account_no=header("total", lang),
        name="",
        state="",
        opening_micros=report.total("opening_micros"),
        recharges_micros=report.total("recharges_micros"),
        deductions_micros=report.total("deductions_micros"),
        fees_micros=report.total("fees_micros"),
        refunds_micros=report.total("refunds_micros"),
        adjustments_micros=report.total("adjustments_micros"),
        closing_micros=report.total("closing_micros"),
        energy_wh=report.total("energy_wh"),
        bands_wh=report.bands_wh,
        cost_micros=report.total("cost_micros"),
        band_costs_micros=report.band_costs_micros,
    )
    total = [c.value(total_line) for c in columns]
    preface = [
        (header("site", lang), report.site.name),
        (header("month", lang), f"{report.month:%Y-%m}"),
        (header("timezone", lang), report.site.timezone),
    ]
    return _workbook(f"{report.month:%Y-%m}", preface, columns, report.lines, total, lang)


def energy_xlsx(rows: Sequence[EnergyRow], period: Period, lang: str) -> bytes:
    columns = [
        Column("period", lambda r: r.period),
        Column("energy", lambda r: kwh(r.energy_wh), ENERGY_FORMAT),
        *[Column(f"{b}_kwh", _band_energy(i), ENERGY_FORMAT) for i, b in enumerate(BANDS)],
        Column("cost", lambda r: yuan_of_micros(r.cost_micros), MONEY_FORMAT),
        Column("meter_days", lambda r: r.meter_days),
    ]
    totals = EnergyRow(
        header("total", lang),
        sum(r.energy_wh for r in rows),
        tuple(sum(r.bands_wh[i] for r in rows) for i in range(4)),  # type: ignore[arg-type]
        sum(r.cost_micros for r in rows),
        sum(r.meter_days for r in rows),
    )
    return _workbook(f"energy-{period.value}", [], columns, rows, [c.value(totals) for c in columns], lang)


def income_xlsx(rows: Sequence[IncomeRow], period: Period, lang: str) -> bytes:
    columns = [
        Column("period", lambda r: r.period),
        Column("channel", lambda r: r.channel),
        Column("payments", lambda r: r.payments),
        Column("income", lambda r: yuan_of_fen(r.income_fen), MONEY_FORMAT),
        Column("refund_count", lambda r: r.refunds),
        Column("refunds_fen", lambda r: yuan_of_fen(r.refunds_fen), MONEY_FORMAT),
        Column("net", lambda r: yuan_of_fen(r.net_fen), MONEY_FORMAT),
    ]
    totals = IncomeRow(
        header("total", lang),
        "",
        sum(r.payments for r in rows),
        sum(r.income_fen for r in rows),
        sum(r.refunds for r in rows),
        sum(r.refunds_fen for r in rows),
    )
    return _workbook(f"income-{period.value}", [], columns, rows, [c.value(totals) for c in columns], lang)


def year_on_year_xlsx(rows: Sequence[YearOnYearRow], year: int, lang: str) -> bytes:
    def change(r: YearOnYearRow) -> Decimal | None:
        permille = YearOnYearRow.change_permille(r.energy_wh, r.previous_energy_wh)
        return None if permille is None else Decimal(permille).scaleb(-1)

    columns = [
        Column("month", lambda r: f"{year:04d}-{r.month:02d}"),
        Column("energy_now", lambda r: kwh(r.energy_wh), ENERGY_FORMAT),
        Column("energy_before", lambda r: kwh(r.previous_energy_wh), ENERGY_FORMAT),
        Column("energy_change", change, "0.0"),
        Column("cost_now", lambda r: yuan_of_micros(r.cost_micros), MONEY_FORMAT),
        Column("cost_before", lambda r: yuan_of_micros(r.previous_cost_micros), MONEY_FORMAT),
        Column("income_now", lambda r: yuan_of_fen(r.income_fen), MONEY_FORMAT),
        Column("income_before", lambda r: yuan_of_fen(r.previous_income_fen), MONEY_FORMAT),
    ]
    totals = YearOnYearRow(
        0,
        sum(r.energy_wh for r in rows),
        sum(r.previous_energy_wh for r in rows),
        sum(r.cost_micros for r in rows),
        sum(r.previous_cost_micros for r in rows),
        sum(r.income_fen for r in rows),
        sum(r.previous_income_fen for r in rows),
    )
    total = [c.value(totals) for c in columns]
    total[0] = header("total", lang)
    return _workbook(f"yoy-{year}", [], columns, rows, total, lang)


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for index in range(0, len(items), CHUNK):
        yield items[index : index + CHUNK]


__all__ = [
    "AccountMonth",
    "EnergyRow",
    "MonthlyReport",
    "Period",
    "ReportTooLarge",
    "SiteInfo",
    "YearOnYearRow",
    "energy_by",
    "energy_xlsx",
    "income_by",
    "income_xlsx",
    "monthly_report",
    "monthly_xlsx",
    "organisation_sites",
    "site_of",
    "year_on_year",
    "year_on_year_xlsx",
]
