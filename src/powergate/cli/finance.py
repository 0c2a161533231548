"""``powergate finance orders|income|shift``: the finance reports, printed or exported to Excel.

Dates and times without a zone are read in ``--zone`` (default Asia/Shanghai), which also decides the day,
month or year income belongs to. Amounts print as exact yuan with two decimals. Every report covers every
organisation (an operator's tool on the server); ``--site`` is a site id and means the same in each report: the
site of the account the order credits (or the refund debits), so one site's order list and income agree.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from powergate.config import load_settings

SITE_HELP = "site id (the site of the account the order credits or the refund debits)"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("finance", help="finance: order list, income, cashier shift; Excel export")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    parser.add_argument("--zone", default="Asia/Shanghai", help="the site's time zone (default Asia/Shanghai)")
    commands = parser.add_subparsers(title="finance reports", metavar="REPORT", required=True)

    orders = commands.add_parser("orders", help="orders created in [--since, --until)")
    _window(orders)
    orders.add_argument("--channel")
    orders.add_argument("--site", type=int, help=SITE_HELP)
    orders.add_argument("--state")
    orders.add_argument("--limit", type=int, default=1_000, help="at most this many, newest first (default 1000)")
    orders.set_defaults(handler=_orders)

    income = commands.add_parser("income", help="income by day, month or year and by channel")
    _window(income)
    income.add_argument("--by", choices=["day", "month", "year"], default="day")
    income.add_argument("--channel")
    income.add_argument("--site", type=int, help=SITE_HELP)
    income.set_defaults(handler=_income)

    shift = commands.add_parser("shift", help="a cashier's shift: takings by channel, cash refunds, drawer")
    shift.add_argument("--operator", required=True)
    shift.add_argument("--start", required=True, help="shift start, e.g. 2026-11-22T08:00")
    shift.add_argument("--end", required=True, help="shift end, e.g. 2026-11-22T17:00")
    shift.add_argument("--site", type=int, help=SITE_HELP)
    shift.add_argument("--xlsx", type=Path, help="also write the report to this Excel file")
    shift.set_defaults(handler=_shift)


def _window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", required=True, help="first day or time, e.g. 2026-11-01")
    parser.add_argument("--until", required=True, help="end (exclusive), e.g. 2026-12-01")
    parser.add_argument("--xlsx", type=Path, help="also write the report to this Excel file")


def _moment(text: str, zone: ZoneInfo) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


def _yuan(amount_fen: int) -> str:
    sign = "-" if amount_fen < 0 else ""
    return f"{sign}{abs(amount_fen) // 100}.{abs(amount_fen) % 100:02d}"


def _run(args: argparse.Namespace, report: Any) -> int:
    from powergate.store.db import make_engine

    try:
        zone = ZoneInfo(args.zone)
    except (ValueError, KeyError) as error:
        print(f"error: --zone {args.zone!r}: {error}")
        return 2
    engine = make_engine(str(args.url or load_settings().database_url))
    try:
        with engine.connect() as conn:
            return int(report(conn, zone))
    except ValueError as error:
        print(f"error: {error}")
        return 2
    finally:
        engine.dispose()


def _orders(args: argparse.Namespace) -> int:
    from powergate.services import finance, queries

    if not 1 <= args.limit <= queries.MAX_REPORT_ROWS:
        print(f"error: --limit must be 1..{queries.MAX_REPORT_ROWS}, got {args.limit}")
        return 2

    def report(conn: Any, zone: ZoneInfo) -> int:
        wanted = queries.OrderFilter(
            site_id=args.site, channel=args.channel, state=args.state,
            since=_moment(args.since, zone), until=_moment(args.until, zone),
        )  # fmt: skip
        # an operator's tool on the server: every organisation's orders (the console shows one organisation's)
        lines = queries.report_orders(conn, queries.PLATFORM, wanted, limit=args.limit)
        for o in lines:
            print(f"{o.order_no}  {o.created_at.astimezone(zone):%Y-%m-%d %H:%M}  {o.channel:8} {o.state:18} "
                  f"{_yuan(o.amount_fen):>12}  {o.wallet}")  # fmt: skip
        print(f"{len(lines)} orders")
        if args.xlsx:
            finance.export_orders(lines, args.xlsx, zone)
        return 0

    return _run(args, report)


def _income(args: argparse.Namespace) -> int:
    from powergate.services import finance, queries

    def report(conn: Any, zone: ZoneInfo) -> int:
        period = finance.Period(args.by)
        since, until = _moment(args.since, zone), _moment(args.until, zone)
        rows = finance.income(conn, queries.PLATFORM, period, since, until, zone, args.site, args.channel)
        for r in rows:
            print(f"{r.period:10} {r.channel:8} {r.payments:6} {_yuan(r.income_fen):>14} "
                  f"{r.refunds:4} {_yuan(r.refunds_fen):>12} {_yuan(r.net_fen):>14}")  # fmt: skip
        print(f"total net {_yuan(sum(r.net_fen for r in rows))}")
        if args.xlsx:
            finance.export_income(rows, args.xlsx, period, zone)
        return 0

    return _run(args, report)


def _shift(args: argparse.Namespace) -> int:
    from powergate.services import finance, queries

    def report(conn: Any, zone: ZoneInfo) -> int:
        start, end = _moment(args.start, zone), _moment(args.end, zone)
        if not start < end:
            print(f"error: --end {args.end} is not after --start {args.start}")
            return 2
        shift = finance.shift_report(conn, queries.PLATFORM, args.operator, start, end, args.site)
        for line in shift.lines:
            print(f"{line.channel:8} {line.method:8} {line.payments:5} {_yuan(line.total_fen):>12}")
        print(f"cash refunds {shift.cash_refunds} {_yuan(-shift.cash_refunds_fen)}")
        print(f"cash in drawer {_yuan(shift.cash_in_drawer_fen)}")
        if args.xlsx:
            finance.export_shift(shift, args.xlsx, zone)
        return 0

    return _run(args, report)
