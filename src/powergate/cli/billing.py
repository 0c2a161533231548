"""``powergate billing``: custom charges, common-area apportionment and post-paid bills from the command line.

    powergate billing charges [--site N] [--now ISO]          charge every item due (once)
    powergate billing apportion --rule N --month YYYY-MM      compute and collect a rule's month (once)
    powergate billing draft --site N --from D --to D          draft the post-paid bills of a period
    powergate billing confirm|issue|void BILL --reason TEXT   move a bill along (audited)
    powergate billing overdue | settle                        mark overdue bills; settle paid ones
    powergate billing export --site N [--state S] [--arrears] --xlsx FILE [--language en|zh-CN]

Every command prints what it did and exits 1 with a message naming the field when the input is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from powergate.config import load_settings

ACTOR = "cli"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("billing", help="custom charges, apportionment and post-paid bills")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    parser.add_argument("--now", type=dt.datetime.fromisoformat, help="the time to act at (default: now, UTC)")
    commands = parser.add_subparsers(title="billing commands", metavar="COMMAND", required=True)
    charges = commands.add_parser("charges", help="charge every custom item that is due, once")
    charges.add_argument("--site", type=int)
    charges.set_defaults(handler=_charges)
    apportion = commands.add_parser("apportion", help="share a rule's month among its participants, once")
    apportion.add_argument("--rule", type=int, required=True)
    apportion.add_argument("--month", required=True, type=lambda s: dt.date.fromisoformat(f"{s}-01"))
    apportion.set_defaults(handler=_apportion)
    draft = commands.add_parser("draft", help="draft the post-paid bills of a period")
    draft.add_argument("--site", type=int, required=True)
    draft.add_argument("--from", dest="first", required=True, type=dt.date.fromisoformat)
    draft.add_argument("--to", dest="last", required=True, type=dt.date.fromisoformat)
    draft.set_defaults(handler=_draft)
    for name in ("confirm", "issue", "void"):
        step = commands.add_parser(name, help=f"{name} a bill")
        step.add_argument("bill_no")
        step.add_argument("--reason", required=True)
        step.set_defaults(handler=_step, step=name)
    commands.add_parser("overdue", help="mark issued bills past their due date overdue").set_defaults(handler=_overdue)
    commands.add_parser("settle", help="mark bills whose order is paid as paid").set_defaults(handler=_settle)
    export = commands.add_parser("export", help="bills or the arrears list as Excel")
    export.add_argument("--site", type=int, required=True)
    export.add_argument("--state")
    export.add_argument("--arrears", action="store_true", help="issued and overdue bills not yet paid")
    export.add_argument("--xlsx", type=Path, required=True)
    export.add_argument("--language", choices=("zh-CN", "en"), default="zh-CN")
    export.set_defaults(handler=_export)


@contextlib.contextmanager
def _engine(args: argparse.Namespace) -> Iterator[Any]:
    from powergate.store.db import make_engine

    engine = make_engine(str(args.url or load_settings().database_url))
    try:
        yield engine
    finally:
        engine.dispose()


def _now(args: argparse.Namespace) -> dt.datetime:
    given: dt.datetime | None = args.now
    if given is None:
        return dt.datetime.now(dt.UTC)
    return given if given.tzinfo else given.replace(tzinfo=dt.UTC)


def _refused(problem: Any) -> int:
    print(f"error: {problem.field}: {problem.message}", file=sys.stderr)
    return 1


def _charges(args: argparse.Namespace) -> int:
    from powergate.services import billing

    with _engine(args) as engine:
        run = billing.run_charges(engine, _now(args), site_id=args.site)
    amount = run.amount_micros / 1_000_000
    print(f"charged {run.charged} (account, room, period) rows, {amount:.2f} in all; skipped {run.skipped}")
    for problem in run.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if run.problems else 0


def _apportion(args: argparse.Namespace) -> int:
    from powergate.services import billing

    with _engine(args) as engine:
        result = billing.run_apportionment(engine, args.rule, args.month, actor=ACTOR, now=_now(args))
    if not isinstance(result, billing.ApportionResult):
        return _refused(result)
    print(
        f"{result.energy_wh / 1000:.3f} kWh, {result.amount_micros / 1_000_000:.2f} shared (version {result.version})"
    )
    for account_id, weight, energy_wh, amount in result.shares:
        print(f"  account {account_id}: weight {weight}, {energy_wh / 1000:.3f} kWh, {amount / 1_000_000:.2f}")
    return 0


def _draft(args: argparse.Namespace) -> int:
    from powergate.services import billing

    with _engine(args) as engine:
        result = billing.draft_postpaid_bills(engine, args.site, args.first, args.last, actor=ACTOR, now=_now(args))
    if not isinstance(result, billing.DraftResult):
        return _refused(result)
    for bill_no in result.bills:
        print(f"drafted {bill_no}")
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


def _step(args: argparse.Namespace) -> int:
    from powergate.services import billing

    steps = {"confirm": billing.confirm_bill, "issue": billing.issue_bill, "void": billing.void_bill}
    with _engine(args) as engine, engine.begin() as conn:
        result = steps[args.step](conn, args.bill_no, actor=ACTOR, reason=args.reason, now=_now(args))
    if not isinstance(result, billing.Bill):
        return _refused(result)
    print(f"{result.bill_no}: {result.state}" + (f", due {result.due_on}" if result.due_on else ""))
    return 0


def _overdue(args: argparse.Namespace) -> int:
    from powergate.services import billing

    with _engine(args) as engine:
        done = billing.mark_overdue(engine, _now(args))
    for bill_no in done:
        print(f"overdue {bill_no}")
    return 0


def _settle(args: argparse.Namespace) -> int:
    from powergate.services import billing

    with _engine(args) as engine:
        done = billing.settle_paid_bills(engine, _now(args))
    for bill_no in done:
        print(f"paid {bill_no}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from powergate.services import billing

    with _engine(args) as engine, engine.connect() as conn:
        found = (
            billing.arrears(conn, args.site) if args.arrears else billing.list_bills(conn, args.site, state=args.state)
        )
    billing.export_bills_xlsx(found, args.xlsx, args.language, "arrears" if args.arrears else "bills")
    print(f"{len(found)} bills written to {args.xlsx}")
    return 0
