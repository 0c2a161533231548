"""``powergate report daily``: a site's (or a time zone's) daily report from its freeze, as text or Excel."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from powergate.config import load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("report", help="reports: the daily report of a site")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    commands = parser.add_subparsers(title="report commands", metavar="COMMAND", required=True)
    daily = commands.add_parser("daily", help="energy per band, cost, recharges, offline / tripped / low balance")
    daily.add_argument("--date", required=True, type=dt.date.fromisoformat, help="the day, e.g. 2026-03-10")
    where = daily.add_mutually_exclusive_group()
    where.add_argument("--timezone", default="Asia/Shanghai", help="every meter in this time zone (default)")
    where.add_argument("--site", type=int, help="the meters of this site")
    daily.add_argument("--xlsx", type=Path, help="also write the report to this Excel file")
    daily.set_defaults(handler=_daily)


def _daily(args: argparse.Namespace) -> int:
    from powergate.services.daily_report import NotFrozen, daily_report, export_xlsx, render
    from powergate.store.db import make_engine

    engine = make_engine(str(args.url or load_settings().database_url))
    try:
        with engine.connect() as conn:
            report = daily_report(conn, args.site if args.site is not None else args.timezone, args.date)
    except (NotFrozen, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(render(report))
    if args.xlsx:
        export_xlsx(report, args.xlsx)
        print(f"written to {args.xlsx}")
    return 0
