"""Finance: income by day / month / year and by channel, the cashier's shift report, Excel (also of the order
list, which comes from the read layer: ``queries.report_orders``).

Every sum is an integer number of fen computed from the orders and refunds tables; nothing is rounded. The
site's time zone decides which day (month, year) a payment belongs to: a payment at 23:30 in Shanghai is
income of that Shanghai day, although it is 15:30 UTC. Income counts a payment when it was paid
(``paid_at``) and a refund when it was made (``created_at``: the credit left the wallet then); refunds the
provider refused were put back and do not count. Every query is bounded (``MAX_ROWS``).

Excel files (openpyxl) carry amounts as exact decimals of yuan with two places and times in the site's zone,
with the zone named in the header, because Excel has no notion of time zones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.styles import Font
from sqlalchemy import Connection, Select, select

from powergate.services.queries import OrderRow
from powergate.store.tables_payments import orders, refunds

MAX_ROWS = 200_000
"""Bound on the rows one report reads; a wider report is refused (narrow the dates)."""
PAID_STATES = ("paid", "refunded", "partially_refunded")
COUNTED_REFUNDS = ("pending", "processing", "succeeded")
DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")


class ReportTooLarge(ValueError):
    """The report would read more than ``MAX_ROWS`` rows."""


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"
    YEAR = "year"


_PERIOD_FORMATS = {Period.DAY: "%Y-%m-%d", Period.MONTH: "%Y-%m", Period.YEAR: "%Y"}


@dataclass(frozen=True, slots=True)
class IncomeRow:
    period: str
    channel: str
    payments: int = 0
    income_fen: int = 0
    refunds: int = 0
    refunds_fen: int = 0

    @property
    def net_fen(self) -> int:
        return self.income_fen - self.refunds_fen


def income(
    conn: Connection,
    period: Period,
    since: dt.datetime,
    until: dt.datetime,
    zone: ZoneInfo = DEFAULT_ZONE,
    site_id: str | None = None,
    channel: str | None = None,
) -> list[IncomeRow]:
    """Payments and refunds in [since, until) per local period and channel, sorted; integer fen."""
    assert since.tzinfo and until.tzinfo, "income bounds must be timezone-aware"
    paid = select(orders.c.channel, orders.c.paid_at, orders.c.amount_fen).where(
        orders.c.state.in_(PAID_STATES), orders.c.paid_at >= since, orders.c.paid_at < until
    )
    back = select(refunds.c.channel, refunds.c.created_at, refunds.c.amount_fen).where(
        refunds.c.state.in_(COUNTED_REFUNDS), refunds.c.created_at >= since, refunds.c.created_at < until
    )
    if site_id is not None:
        paid, back = paid.where(orders.c.site_id == site_id), back.where(refunds.c.site_id == site_id)
    if channel is not None:
        paid, back = paid.where(orders.c.channel == channel), back.where(refunds.c.channel == channel)
    sums: dict[tuple[str, str], list[int]] = {}
    fmt = _PERIOD_FORMATS[period]
    for index, query in ((0, paid), (2, back)):
        for row_channel, at, amount in _bounded(conn, query):
            cell = sums.setdefault((at.astimezone(zone).strftime(fmt), row_channel), [0, 0, 0, 0])
            cell[index] += 1
            cell[index + 1] += int(amount)
    return [IncomeRow(p, ch, *values) for (p, ch), values in sorted(sums.items())]


def _bounded(conn: Connection, query: Select[Any]) -> Iterable[Any]:
    rows = conn.execute(query.limit(MAX_ROWS + 1)).all()
    if len(rows) > MAX_ROWS:
        raise ReportTooLarge(f"the report would read more than {MAX_ROWS} rows; narrow the dates")
    return rows


@dataclass(frozen=True, slots=True)
class ShiftLine:
    channel: str
    method: str
    payments: int
    total_fen: int


@dataclass(frozen=True, slots=True)
class ShiftReport:
    """What one operator took and paid out during a shift; ``cash_in_drawer_fen`` must match the drawer."""

    operator: str
    start: dt.datetime
    end: dt.datetime
    lines: tuple[ShiftLine, ...] = ()
    cash_refunds: int = 0
    cash_refunds_fen: int = 0
    receipts: tuple[str, ...] = field(default=())

    @property
    def total_fen(self) -> int:
        return sum(line.total_fen for line in self.lines)

    @property
    def cash_in_drawer_fen(self) -> int:
        cash = sum(line.total_fen for line in self.lines if line.channel == "cashier" and line.method == "cash")
        return cash - self.cash_refunds_fen


def shift_report(conn: Connection, operator: str, start: dt.datetime, end: dt.datetime) -> ShiftReport:
    """Payments the operator confirmed and cash refunds the operator paid in [start, end)."""
    assert start.tzinfo and end.tzinfo and start < end, "a shift is a timezone-aware [start, end)"
    taken = select(
        orders.c.channel, orders.c.method, orders.c.amount_fen, orders.c.receipt_no, orders.c.order_no
    ).where(
        orders.c.operator == operator,
        orders.c.state.in_(PAID_STATES),
        orders.c.paid_at >= start,
        orders.c.paid_at < end,
    )
    lines: dict[tuple[str, str], list[int]] = {}
    receipts: list[str] = []
    for channel, method, amount, receipt_no, order_no in _bounded(conn, taken):
        cell = lines.setdefault((channel, method), [0, 0])
        cell[0] += 1
        cell[1] += int(amount)
        receipts.append(receipt_no or order_no)
    paid_out = select(refunds.c.amount_fen).where(
        refunds.c.operator == operator,
        refunds.c.destination == "cash",
        refunds.c.state.in_(COUNTED_REFUNDS),
        refunds.c.created_at >= start,
        refunds.c.created_at < end,
    )
    cash_refunds = [int(amount) for (amount,) in _bounded(conn, paid_out)]
    return ShiftReport(
        operator,
        start,
        end,
        tuple(ShiftLine(ch, m, n, total) for (ch, m), (n, total) in sorted(lines.items())),
        len(cash_refunds),
        sum(cash_refunds),
        tuple(sorted(receipts)),
    )


# --- Excel ---------------------------------------------------------------------------------------------------


def yuan(amount_fen: int) -> Decimal:
    """Fen as an exact decimal of yuan (Excel shows it with the ``0.00`` format)."""
    return Decimal(amount_fen).scaleb(-2)


def _local(moment: dt.datetime | None, zone: ZoneInfo) -> dt.datetime | None:
    return None if moment is None else moment.astimezone(zone).replace(tzinfo=None)


def _sheet(path: Path, title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]], money: set[int]) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title[:31]
    sheet.append(list(headers))
    for row in rows:
        sheet.append(list(row))
    for index in money:
        for (cell,) in sheet.iter_rows(min_row=2, min_col=index + 1, max_col=index + 1):
            cell.number_format = "0.00"
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    sheet.freeze_panes = "A2"
    book.save(path)


def export_orders(lines: Sequence[OrderRow], path: Path, zone: ZoneInfo = DEFAULT_ZONE) -> None:
    """The order list of the read layer (``queries.report_orders``); Site is the id of the account's site."""
    headers = [
        "Order no", "Wallet", "Site", "Channel", "Method", "Amount (yuan)", "Refunded (yuan)", "State",
        f"Created ({zone.key})", f"Paid ({zone.key})", "Provider transaction", "Receipt / reference", "Operator",
    ]  # fmt: skip
    rows = (
        (
            o.order_no, o.wallet, o.site_id, o.channel, o.method, yuan(o.amount_fen), yuan(o.refunded_fen),
            o.state, _local(o.created_at, zone), _local(o.paid_at, zone), o.provider_txn_id, o.receipt_no,
            o.operator,
        )
        for o in lines
    )  # fmt: skip
    _sheet(path, "Orders", headers, rows, {5, 6})


def export_income(rows: Sequence[IncomeRow], path: Path, period: Period, zone: ZoneInfo = DEFAULT_ZONE) -> None:
    headers = [
        f"{period.value.title()} ({zone.key})",
        "Channel",
        "Payments",
        "Income (yuan)",
        "Refunds",
        "Refunds (yuan)",
        "Net (yuan)",
    ]
    body = [
        (r.period, r.channel, r.payments, yuan(r.income_fen), r.refunds, yuan(r.refunds_fen), yuan(r.net_fen))
        for r in rows
    ]
    total = (
        "Total",
        "",
        sum(r.payments for r in rows),
        yuan(sum(r.income_fen for r in rows)),
        sum(r.refunds for r in rows),
        yuan(sum(r.refunds_fen for r in rows)),
        yuan(sum(r.net_fen for r in rows)),
    )
    _sheet(path, f"Income by {period.value}", headers, [*body, total], {3, 5, 6})


def export_shift(report: ShiftReport, path: Path, zone: ZoneInfo = DEFAULT_ZONE) -> None:
    headers = ["Channel", "Method", "Payments", "Total (yuan)"]
    rows: list[Sequence[Any]] = [(s.channel, s.method, s.payments, yuan(s.total_fen)) for s in report.lines]
    rows += [
        ("Cash refunds", "cash", report.cash_refunds, yuan(-report.cash_refunds_fen)),
        ("Cash in drawer", "cash", "", yuan(report.cash_in_drawer_fen)),
        (f"Operator {report.operator}", f"{_local(report.start, zone)} .. {_local(report.end, zone)}", zone.key, None),
    ]
    _sheet(path, "Shift", headers, rows, {3})
