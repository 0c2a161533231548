"""``powergate ledger audit|balance``: check the journal against the balances, show an account."""

from __future__ import annotations

import argparse
from typing import Any

from powergate.config import load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ledger", help="the prepaid ledger: audit, balances")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    commands = parser.add_subparsers(title="ledger commands", metavar="ACTION", required=True)
    audit = commands.add_parser(
        "audit", help="recompute every balance from the journal; exit 1 and name each discrepancy"
    )
    audit.set_defaults(handler=_audit)
    show = commands.add_parser("balance", help="the balance of an account, e.g. wallet:A-1001")
    show.add_argument("account")
    show.set_defaults(handler=_balance)


def _engine(args: argparse.Namespace) -> Any:
    from powergate.store.db import make_engine

    return make_engine(str(args.url or load_settings().database_url))


def _audit(args: argparse.Namespace) -> int:
    from powergate.store.ledger import audit

    engine = _engine(args)
    try:
        with engine.connect() as conn:
            problems = audit(conn)
            entries = conn.exec_driver_sql("SELECT count(*) FROM ledger_entries").scalar_one()
    finally:
        engine.dispose()
    if problems:
        for problem in problems:
            print(f"DISCREPANCY {problem.subject}: {problem.message}")
        print(f"ledger audit FAILED: {len(problems)} discrepancies in {entries} entries")
        return 1
    print(f"ledger audit ok: {entries} entries balance, every account balance equals its postings")
    return 0


def _balance(args: argparse.Namespace) -> int:
    from powergate.domain.money import format_money
    from powergate.store.ledger import balance

    engine = _engine(args)
    try:
        with engine.connect() as conn:
            try:
                found = balance(conn, args.account)
            except KeyError as error:
                print(f"error: {error.args[0]}")
                return 2
    finally:
        engine.dispose()
    print(
        f"{found.code}: {format_money(found.balance_micros)} "
        f"({found.balance_micros} micros; overdraft limit {format_money(found.overdraft_limit_micros)})"
    )
    return 0
