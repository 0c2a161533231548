"""``powergate calendar`` (site day types), ``powergate tou push`` and ``powergate autorecharge run``.

- ``calendar set --site ID --date D --type workday|weekend|holiday|default --actor WHO --reason WHY``: override
  (or, with ``default``, stop overriding) one date of a site; audited. Exit 2 with the field named on bad input.
- ``calendar show --site ID [--from D] [--days N]``: each date's day type and where it comes from.
- ``tou push TARGET --actor WHO --reason WHY [--horizon-days N]``: queue the TOU tables of the tariff in effect
  to a meter (its id) or to every meter of a wallet (its code); the head-end delivers them.
- ``autorecharge run --payments-config FILE``: one pass of the auto-recharge job (cron it every few seconds
  or minutes, or call ``services.autorecharge.run_due`` from a worker).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from powergate.config import load_settings
from powergate.domain.calendar import DayType
from powergate.headend.commands import Problem
from powergate.services import autorecharge, prepaid, site_calendar
from powergate.store.db import make_engine

MAX_SHOW_DAYS = 400


def register(subparsers: Any) -> None:
    calendar = subparsers.add_parser("calendar", help="site calendars: workday / weekend / holiday overrides")
    calendar.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    commands = calendar.add_subparsers(title="calendar commands", metavar="COMMAND", required=True)
    set_day = commands.add_parser("set", help="override one date of a site (audited)")
    set_day.add_argument("--site", type=int, required=True)
    set_day.add_argument("--date", type=dt.date.fromisoformat, required=True, help="e.g. 2027-10-08")
    set_day.add_argument("--type", required=True, choices=[*(d.value for d in DayType), "default"])
    set_day.add_argument("--actor", required=True, help="who asks (audited)")
    set_day.add_argument("--reason", required=True, help="why (audited)")
    set_day.set_defaults(handler=_set)
    show = commands.add_parser("show", help="day types of a site, with their source")
    show.add_argument("--site", type=int, required=True)
    show.add_argument("--from", dest="start", type=dt.date.fromisoformat, default=None)
    show.add_argument("--days", type=int, default=31)
    show.set_defaults(handler=_show)

    tou = subparsers.add_parser("tou", help="push TOU tables to meters")
    tou.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    tou_commands = tou.add_subparsers(title="tou commands", metavar="COMMAND", required=True)
    push = tou_commands.add_parser("push", help="queue the TOU tables of the tariff in effect now")
    push.add_argument("target", help="a meter id, or a wallet code (every meter of the wallet)")
    push.add_argument("--actor", required=True)
    push.add_argument("--reason", required=True)
    push.add_argument("--horizon-days", type=int, default=prepaid.TOU_HORIZON_DAYS)
    push.set_defaults(handler=_push)

    auto = subparsers.add_parser("autorecharge", help="auto-recharge from payment agreements")
    auto.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    auto_commands = auto.add_subparsers(title="autorecharge commands", metavar="COMMAND", required=True)
    run = auto_commands.add_parser("run", help="one pass: charge wallets below their threshold")
    run.add_argument("--payments-config", type=Path, required=True, help="payments TOML (its [sandbox] section)")
    run.set_defaults(handler=_run)


def _engine(args: argparse.Namespace) -> Any:
    return make_engine(args.url or load_settings().database_url)


def _set(args: argparse.Namespace) -> int:
    day_type = None if args.type == "default" else DayType(args.type)
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            problem = site_calendar.set_day(
                conn, args.site, args.date, day_type, actor=args.actor, reason=args.reason, now=dt.datetime.now(dt.UTC)
            )
            if problem is not None:
                print(f"error: {problem.field}: {problem.message}")
                conn.rollback()
                return 2
    finally:
        engine.dispose()
    print(f"site {args.site} {args.date.isoformat()}: {args.type}")
    return 0


def _show(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_SHOW_DAYS:
        print(f"error: --days: must be 1..{MAX_SHOW_DAYS}")
        return 2
    engine = _engine(args)
    try:
        with engine.connect() as conn:
            calendar = site_calendar.calendar_of_site(conn, args.site)
            admin = {d.day: d for d in site_calendar.days(conn, args.site)}
    finally:
        engine.dispose()
    start = args.start or dt.datetime.now(dt.UTC).date()
    for offset in range(args.days):
        day = start + dt.timedelta(days=offset)
        override = admin.get(day)
        source = f"override by {override.updated_by}: {override.reason}" if override else ""
        print(f"{day.isoformat()} {day:%a} {calendar.day_type(day).value:8} {source}".rstrip())
    return 0


def _push(args: argparse.Namespace) -> int:
    engine = _engine(args)
    try:
        done = prepaid.push_tou(
            engine,
            args.target,
            prepaid.Operator(args.actor, args.reason),
            dt.datetime.now(dt.UTC),
            horizon_days=args.horizon_days,
        )
    finally:
        engine.dispose()
    if isinstance(done, Problem):
        print(f"error: {done.field}: {done.message}")
        return 2
    for queued in done:
        print(f"{queued.queued.meter_id}: {queued.queued.command_id} queued")
    return 0


def _run(args: argparse.Namespace) -> int:
    from powergate.payments.config import ConfigError, load_payments_config
    from powergate.payments.sandbox import Sandbox

    try:
        config = load_payments_config(args.payments_config)
    except (ConfigError, OSError) as error:
        print(f"error: --payments-config: {error}")
        return 2
    if config.sandbox is None:
        print("error: --payments-config: no [sandbox] section: only the sandbox charges under agreements yet")
        return 2
    engine = _engine(args)
    try:
        placed = autorecharge.run_due(engine, {"sandbox": Sandbox(config.sandbox.secret)}, dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()
    print(f"{placed} automatic orders placed")
    return 0
