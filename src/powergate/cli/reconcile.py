"""``powergate reconcile --date D``: print the day's reconciliation; exit 1 on any discrepancy."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from powergate.config import load_settings

DEFAULT_TIMEZONE = "Asia/Shanghai"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="tie payments, deductions, refunds and balances together for a day; exit 1 on a discrepancy",
    )
    parser.add_argument("--date", required=True, type=_date, help="the day, e.g. 2026-11-21 (site-local)")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    parser.add_argument(
        "--timezone",
        default=DEFAULT_TIMEZONE,
        help=f"time zone of wallets that belong to no site (default {DEFAULT_TIMEZONE}); sites use their own",
    )
    parser.set_defaults(handler=_reconcile)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date: {text!r} is not a date like 2026-11-21") from None


def _reconcile(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfoNotFoundError, available_timezones

    from powergate.services.reconcile import reconcile, render
    from powergate.store.db import make_engine

    if args.timezone not in available_timezones():
        print(f"error: --timezone: unknown time zone {args.timezone!r}")
        return 2
    engine = make_engine(str(args.url or load_settings().database_url))
    try:
        with engine.connect() as conn:
            report = reconcile(conn, args.date, args.timezone)
    except ZoneInfoNotFoundError as error:
        print(f"error: a site's time zone is unknown: {error}")
        return 2
    finally:
        engine.dispose()
    print(render(report))
    return 0 if report.ok else 1
