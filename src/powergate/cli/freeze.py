"""``powergate freeze daily --date D [--timezone TZ | --site ID]`` and ``powergate freeze catch-up``.

Each daily freeze runs once per scope and day across workers (see ``powergate.services.freeze``); running the
command again for a frozen day prints that it is done. Exit code 1 when a day could not be frozen.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from powergate.config import load_settings
from powergate.services import freeze
from powergate.store.db import make_engine


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("freeze", help="daily freeze of registers, usage, cost and balances")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    commands = parser.add_subparsers(title="freeze commands", metavar="COMMAND", required=True)
    daily = commands.add_parser("daily", help="freeze one site-local day")
    daily.add_argument("--date", required=True, type=dt.date.fromisoformat, help="the day, e.g. 2026-03-10")
    where = daily.add_mutually_exclusive_group()
    where.add_argument("--timezone", default="Asia/Shanghai", help="every meter in this time zone (default)")
    where.add_argument("--site", type=int, help="the meters of this site")
    daily.set_defaults(handler=_daily)
    catch_up = commands.add_parser("catch-up", help="every missed day since the last completed one")
    catch_up.set_defaults(handler=_catch_up)


def _print(run: freeze.FreezeRun) -> None:
    state = "not due" if run.claim is None else run.claim.value
    print(f"{run.period}: {state}, {run.meters} meters frozen, {run.estimated} estimated")
    for problem in run.problems:
        print(f"  {problem}")


def _daily(args: argparse.Namespace) -> int:
    engine = make_engine(args.url or load_settings().database_url)
    try:
        scope = args.site if args.site is not None else args.timezone
        run = freeze.daily_freeze(engine, scope, args.date, dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()
    _print(run)
    return 1 if run.problems else 0


def _catch_up(args: argparse.Namespace) -> int:
    engine = make_engine(args.url or load_settings().database_url)
    try:
        runs = freeze.catch_up(engine, dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()
    for run in runs:
        _print(run)
    if not runs:
        print("nothing to catch up")
    return 1 if any(run.problems for run in runs) else 0
