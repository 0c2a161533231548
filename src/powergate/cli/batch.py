"""``powergate batch``: batch operations from the command line.

    powergate batch create --org ORG --operation trip --site 1 --reason TEXT [--run-at ISO] [--per-link N]
    powergate batch create --org ORG --operation recharge --accounts-file list.txt --param amount_fen=5000 ...
    powergate batch preview --org ORG --operation trip --tag dorm-north
    powergate batch list --org ORG | show ID [--failed] | retry ID --reason TEXT | cancel ID --reason TEXT
    powergate batch run [--now ISO]          one step of every due batch (the worker does this every few seconds)
    powergate batch tag --org ORG --account N --tags a,b --reason TEXT

Selections: ``--site/--building/--floor/--tariff/--tag`` (all given must match) or ONE list (``--meters-file``,
``--accounts-file``: ids separated by newlines, commas or spaces). Parameters: ``--param name=value`` (integers;
``prices_micros`` as four comma-separated integers; ``tariff_id`` as text). Exit 1 with a message naming the
field when the input is refused.
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
    parser = subparsers.add_parser("batch", help="batch operations on many meters or accounts")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    parser.add_argument("--now", type=dt.datetime.fromisoformat, help="the time to act at (default: now, UTC)")
    commands = parser.add_subparsers(title="batch commands", metavar="COMMAND", required=True)
    for name in ("create", "preview"):
        sub = commands.add_parser(name, help=f"{name} a batch")
        sub.add_argument("--org", required=True, help="organisation code")
        sub.add_argument("--operation", required=True)
        sub.add_argument("--site", type=int)
        sub.add_argument("--building", type=int)
        sub.add_argument("--floor", type=int)
        sub.add_argument("--tariff")
        sub.add_argument("--tag")
        sub.add_argument("--meters-file", type=Path)
        sub.add_argument("--accounts-file", type=Path)
        if name == "create":
            sub.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
            sub.add_argument("--reason", required=True)
            sub.add_argument("--run-at", type=dt.datetime.fromisoformat)
            sub.add_argument("--per-link", type=int, default=None, help="commands in flight per DTU link")
            sub.add_argument("--valid-s", type=int, default=None, help="how long each meter command stays valid")
        sub.set_defaults(handler=_create if name == "create" else _preview)
    listing = commands.add_parser("list", help="the organisation's batches")
    listing.add_argument("--org", required=True)
    listing.set_defaults(handler=_list)
    show = commands.add_parser("show", help="a batch's progress and targets")
    show.add_argument("--org", required=True)
    show.add_argument("batch_id", type=int)
    show.add_argument("--failed", action="store_true", help="only the failed targets")
    show.set_defaults(handler=_show)
    for name in ("retry", "cancel"):
        step = commands.add_parser(name, help=f"{name} a batch" + (" (its failed targets)" if name == "retry" else ""))
        step.add_argument("--org", required=True)
        step.add_argument("batch_id", type=int)
        step.add_argument("--reason", required=True)
        step.set_defaults(handler=_step, step=name)
    commands.add_parser("run", help="move every due batch on one step").set_defaults(handler=_run)
    tag = commands.add_parser("tag", help="replace an account's tags")
    tag.add_argument("--org", required=True)
    tag.add_argument("--account", type=int, required=True)
    tag.add_argument("--tags", default="", help="comma-separated; empty removes all")
    tag.add_argument("--reason", required=True)
    tag.set_defaults(handler=_tag)


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


def _refused(field: str, message: str) -> int:
    print(f"error: {field}: {message}", file=sys.stderr)
    return 1


def _organisation(engine: Any, code: str) -> int | None:
    from sqlalchemy import select

    from powergate.store.tables_structure import organisations

    with engine.connect() as conn:
        found = conn.execute(select(organisations.c.id).where(organisations.c.code == code)).scalar()
    return None if found is None else int(found)


def _selection(args: argparse.Namespace) -> Any:
    from powergate.services import batch

    meters = batch.parse_list(args.meters_file.read_text()) if args.meters_file else ()
    numbers = batch.parse_list(args.accounts_file.read_text()) if args.accounts_file else ()
    return batch.Selection(args.site, args.building, args.floor, args.tariff, args.tag, meters, numbers)


def _parameters(items: list[str]) -> dict[str, Any] | str:
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            return f"--param {item!r}: expected NAME=VALUE"
        if name == "tariff_id":
            values[name] = text
        elif name == "prices_micros":
            try:
                values[name] = [int(p) for p in text.split(",")]
            except ValueError:
                return f"--param {item!r}: four comma-separated integers"
        else:
            try:
                values[name] = int(text)
            except ValueError:
                return f"--param {item!r}: an integer"
    return values


def _operation(text: str) -> Any:
    from powergate.services import batch

    try:
        return batch.Operation(text)
    except ValueError:
        return None


def _create(args: argparse.Namespace) -> int:
    from powergate.services import batch

    operation = _operation(args.operation)
    if operation is None:
        return _refused("operation", f"{args.operation!r}; one of {', '.join(op.value for op in batch.Operation)}")
    parameters = _parameters(args.param)
    if isinstance(parameters, str):
        return _refused("param", parameters)
    with _engine(args) as engine:
        org = _organisation(engine, args.org)
        if org is None:
            return _refused("org", f"no organisation {args.org!r}")
        run_at = args.run_at if args.run_at is None or args.run_at.tzinfo else args.run_at.replace(tzinfo=dt.UTC)
        new = batch.NewBatch(
            org, operation, _selection(args), parameters, args.reason, ACTOR, run_at,
            args.per_link or batch.DEFAULT_MAX_IN_FLIGHT_PER_LINK, args.valid_s or batch.DEFAULT_COMMAND_VALID_S,
        )  # fmt: skip
        with engine.begin() as conn:
            made = batch.create_batch(conn, new, _now(args))
        if not isinstance(made, int):
            return _refused(made.field, made.message)
        batch.run_due(engine, _now(args), batch_ids=[made])
        return _print_batch(engine, org, made, failed_only=False)


def _preview(args: argparse.Namespace) -> int:
    from powergate.services import batch

    operation = _operation(args.operation)
    if operation is None:
        return _refused("operation", f"{args.operation!r}; one of {', '.join(op.value for op in batch.Operation)}")
    with _engine(args) as engine:
        org = _organisation(engine, args.org)
        if org is None:
            return _refused("org", f"no organisation {args.org!r}")
        with engine.connect() as conn:
            found = batch.preview(conn, org, operation, _selection(args))
    if not isinstance(found, batch.Preview):
        return _refused(found.field, found.message)
    print(f"{found.count} {found.target_kind}s ({found.skipped} to skip): {', '.join(found.sample)}")
    return 0


def _print_batch(engine: Any, org: int, batch_id: int, *, failed_only: bool) -> int:
    from powergate.services import batch

    with engine.connect() as conn:
        found = batch.get_batch(conn, org, batch_id)
        if found is None:
            return _refused("batch", f"no batch {batch_id}")
        targets = batch.list_targets(conn, org, batch_id, state="failed" if failed_only else None, limit=5_000)
    counts = ", ".join(f"{state} {n}" for state, n in sorted(found.counts.items()))
    print(f"batch {found.id}: {found.operation} {found.state}, {found.finished}/{found.total} ({counts})")
    for target in targets or []:
        print(f"  {target.label}\t{target.state}\tattempt {target.attempt}\t{target.result or ''}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from powergate.services import batch

    with _engine(args) as engine:
        org = _organisation(engine, args.org)
        if org is None:
            return _refused("org", f"no organisation {args.org!r}")
        with engine.connect() as conn:
            found = batch.list_batches(conn, org, limit=200)
    for b in found:
        print(f"{b.id}\t{b.operation}\t{b.state}\t{b.finished}/{b.total}\t{b.run_at.isoformat()}\t{b.reason}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        org = _organisation(engine, args.org)
        if org is None:
            return _refused("org", f"no organisation {args.org!r}")
        return _print_batch(engine, org, args.batch_id, failed_only=args.failed)


def _step(args: argparse.Namespace) -> int:
    from powergate.services import batch

    with _engine(args) as engine:
        org = _organisation(engine, args.org)
        if org is None:
            return _refused("org", f"no organisation {args.org!r}")
        action = batch.retry_failures if args.step == "retry" else batch.cancel_batch
        with engine.begin() as conn:
            done = action(conn, org, args.batch_id, actor=ACTOR, reason=args.reason, now=_now(args))
        if not isinstance(done, batch.BatchView):
            return _refused(done.field, done.message)
        return _print_batch(engine, org, args.batch_id, failed_only=False)


def _run(args: argparse.Namespace) -> int:
    from powergate.services import batch

    with _engine(args) as engine:
        report = batch.run_due(engine, _now(args))
    print(report.summary() or "nothing to do")
    return 0


def _tag(args: argparse.Namespace) -> int:
    from powergate.services import batch

    with _engine(args) as engine:
        org = _organisation(engine, args.org)
        if org is None:
            return _refused("org", f"no organisation {args.org!r}")
        tags = [t for t in args.tags.split(",") if t.strip()]
        with engine.begin() as conn:
            done = batch.set_tags(conn, org, args.account, tags, actor=ACTOR, reason=args.reason, now=_now(args))
    if not isinstance(done, tuple):
        return _refused(done.field, done.message)
    print(f"account {args.account}: {', '.join(done) or '(no tags)'}")
    return 0
