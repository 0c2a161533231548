"""Finance: income by day / month / year and by channel, the cashier's shift report, Excel (also of the order
list, which comes from the read layer: ``queries.report_orders``).

Every sum is an integer number of fen over the payments and refunds of the read layer
(``queries.report_payments``, ``queries.report_refunds``); nothing is rounded. They are the orders of the order
list: the same scope (an organisation, or ``queries.PLATFORM`` for the operator's tools) and the same site (the
site of the account whose wallet the order credits), so the order list and the income of one site add up
alike. The site's time zone decides which day (month, year) a payment belongs to: a payment at 23:30 in
Shanghai is income of that Shanghai day, although it is 15:30 UTC. Income counts a payment when it was paid
(``paid_at``) and a refund when it was made (``created_at``: the credit left the wallet then); refunds the
provider refused were put back and do not count. Every query is bounded (``MAX_ROWS``): a wider report is
``ReportTooLarge``, never a sum of a cut list.

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
from sqlalchemy import Connection

from powergate.services.queries import (
    MAX_REPORT_ROWS,
    OrderRow,
    PlatformScope,
    Scope,
    TakingsFilter,
    report_payments,
    report_refunds,
)
from powergate.services.queries import ReportTooLarge as ReportTooLarge  # the reports' error, raised there

MAX_ROWS = MAX_REPORT_ROWS
"""Bound on the rows one report reads; a wider report is refused (``ReportTooLarge``: narrow the dates)."""
DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")


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
    scope: Scope | PlatformScope,
    period: Period,
    since: dt.datetime,
    until: dt.datetime,
    zone: ZoneInfo = DEFAULT_ZONE,
    site_id: int | None = None,
    channel: str | None = None,
) -> list[IncomeRow]:
    """Payments and refunds in [since, until) per local period and channel, sorted; integer fen.

    ``site_id`` is the id of the site of the account the order credits, as for ``queries.report_orders``.
    """
    assert since.tzinfo and until.tzinfo, "income bounds must be timezone-aware"
    wanted = TakingsFilter(since, until, site_id=site_id, channel=channel)
    sums: dict[tuple[str, str], list[int]] = {}
    fmt = _PERIOD_FORMATS[period]
    for index, takings in ((0, report_payments(conn, scope, wanted)), (2, report_refunds(conn, scope, wanted))):
        for taking in takings:
            cell = sums.setdefault((taking.at.astimezone(zone).strftime(fmt), taking.channel), [0, 0, 0, 0])
            cell[index] += 1
            cell[index + 1] += taking.amount_fen
    return [IncomeRow(p, ch, *values) for (p, ch), values in sorted(sums.items())]


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


def shift_report(
    conn: Connection,
    scope: Scope | PlatformScope,
    operator: str,
    start: dt.datetime,
    end: dt.datetime,
    site_id: int | None = None,
) -> ShiftReport:
    """Payments the operator confirmed and cash refunds the operator paid in [start, end); with ``site_id``
    only those of the accounts of that site (as for ``queries.report_orders``)."""
    assert start.tzinfo and end.tzinfo and start < end, "a shift is a timezone-aware [start, end)"
    wanted = TakingsFilter(start, end, site_id=site_id, operator=operator)
    lines: dict[tuple[str, str], list[int]] = {}
    receipts: list[str] = []
    for taking in report_payments(conn, scope, wanted):
        cell = lines.setdefault((taking.channel, taking.method), [0, 0])
        cell[0] += 1
        cell[1] += taking.amount_fen
        receipts.append(taking.reference or taking.number)
    cash_refunds = [t.amount_fen for t in report_refunds(conn, scope, wanted) if t.method == "cash"]
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
