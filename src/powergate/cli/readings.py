"""``powergate readings partitions|retention``: where raw readings are held, and removing old ones by hand.

    powergate readings partitions [--exact]
        PostgreSQL: each monthly partition with its month and row estimate (``--exact``: counted), and the
        default partition's readings, with a warning when it holds any. SQLite: not partitioned; the months
        held, counted.
    powergate readings retention --keep-months N [--exact]
        dry run: the cutoff, what would be removed (partitions dropped whole, readings deleted) and whether
        the freeze precondition holds. Changes nothing.
    powergate readings retention --keep-months N --apply --reason TEXT [--actor WHO]
        runs what the scheduler's daily job runs (``services.retention``: partitions ahead, the freeze
        precondition, bounded drops), now, each removal audited with who (``--actor``, default
        ``cli:<OS user>``) and why. Exit 1, nothing removed, when the precondition does not hold.

``--format json`` on each action; ``--url`` before it, as for the other commands. ``N`` is 3..1200 months, as
``scheduler.readings_keep_months``.
"""

from __future__ import annotations

import argparse
from typing import Any

from powergate.cli import _operator as op


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("readings", help="raw readings: partitions, retention")
    op.add_url(parser)
    op.add_now(parser)
    commands = parser.add_subparsers(title="readings commands", metavar="ACTION", required=True)
    listing = commands.add_parser("partitions", help="partitions (PostgreSQL) or months held (SQLite), with sizes")
    listing.add_argument("--exact", action="store_true", help="count each partition (slow on large months)")
    op.add_format(listing)
    listing.set_defaults(handler=_partitions)
    retention = commands.add_parser("retention", help="preview (default) or --apply the retention of raw readings")
    retention.add_argument("--keep-months", type=int, required=True, metavar="N", help="months kept (3..1200)")
    retention.add_argument("--apply", action="store_true", help="remove them (default: a dry run)")
    retention.add_argument("--reason", help="why (audited); required with --apply")
    retention.add_argument("--exact", action="store_true", help="dry run: count the partitions that would go")
    op.add_actor(retention)
    op.add_format(retention)
    retention.set_defaults(handler=_retention)


# -- partitions ---------------------------------------------------------------------------------------------------


def _partitions(args: argparse.Namespace) -> int:
    from powergate.store import partitions

    with op.engine_of(args) as engine, engine.connect() as conn:
        database = conn.dialect.name
        partitioned = partitions.is_partitioned(conn)
        sizes = partitions.partition_sizes(conn, exact=args.exact) if partitioned else []
        held = []  # the default partition's months (PostgreSQL), or every month held (SQLite)
        if partitioned:
            held = partitions.months_held(conn, partitions.DEFAULT_PARTITION)
        elif database == "sqlite":
            held = partitions.months_held(conn)
    default = next((p for p in sizes if p.month is None), None)
    warnings = []
    if default is not None and default.rows:
        months = ", ".join(f"{p.month:%Y-%m}" for p in held if p.month is not None)
        warnings.append(
            f"{default.name} holds {default.rows} readings (months {months}): readings far from today arrived;"
            " they are kept and rated, check those meters' clocks"
        )
    if database == "postgresql" and not partitioned:
        warnings.append("readings is not partitioned yet: run `powergate db upgrade` (migration 0021)")
    for warning in warnings:
        op.warn(warning)
    if args.format == "json":
        document: dict[str, object] = {"database": database, "partitioned": partitioned, "warnings": warnings}
        if partitioned:
            document["partitions"] = [_size_json(p) for p in sizes]
            document["default_readings"] = None if default is None else default.rows
            document["default_months"] = [_size_json(p) for p in held]
        else:
            document["months"] = [_size_json(p) for p in held]
        op.print_json(document)
        return 0
    if partitioned:
        print(f"readings is partitioned by UTC month ({database}): {len(sizes)} partitions")
        op.print_table(("MONTH", "PARTITION", "READINGS"), [(_month(p), p.name, _rows(p)) for p in sizes])
        if any(p.estimated for p in sizes):
            print("(~ estimated by the planner, ? not yet estimated: --exact counts them)")
    elif database == "sqlite":
        print(f"readings is not partitioned (sqlite): {sum(p.rows or 0 for p in held)} readings in {len(held)} months")
        if held:
            op.print_table(("MONTH", "READINGS"), [(_month(p), _rows(p)) for p in held])
    return 0


def _month(size: Any) -> str:
    return "default" if size.month is None else f"{size.month:%Y-%m}"


def _rows(size: Any) -> str:
    if size.rows is None:
        return "?"
    return f"~{size.rows}" if size.estimated else str(size.rows)


def _size_json(size: Any) -> dict[str, object]:
    found: dict[str, object] = {"month": None if size.month is None else f"{size.month:%Y-%m}"}
    if size.name is not None:
        found["name"] = size.name
    found |= {"readings": size.rows, "estimated": size.estimated}
    return found


# -- retention ----------------------------------------------------------------------------------------------------


def _retention(args: argparse.Namespace) -> int:
    from powergate.services import retention

    keep = args.keep_months
    if not retention.MIN_KEEP_MONTHS <= keep <= retention.MAX_KEEP_MONTHS:
        return op.usage(
            "keep-months",
            f"{keep} is not allowed; keep {retention.MIN_KEEP_MONTHS}..{retention.MAX_KEEP_MONTHS} months"
            " (freezes and reconciliation need the recent ones)",
        )
    if not args.apply:
        return _preview(args, keep)
    actor = op.actor_of(args)
    if actor is None:
        return op.EXIT_USAGE
    if args.reason is None or not args.reason.strip():
        return op.usage("reason", "required with --apply: say why the readings are removed (audited)")
    from powergate.store.audit import MAX_REASON_CHARS

    if len(args.reason) > MAX_REASON_CHARS // 2:
        return op.usage("reason", f"{len(args.reason)} characters, more than {MAX_REASON_CHARS // 2}")
    with op.engine_of(args) as engine:
        run = retention.apply_retention(engine, op.now_of(args), keep, actor=actor, reason=args.reason.strip())
    if args.format == "json":
        op.print_json(
            {
                "apply": True,
                "keep_months": keep,
                "cutoff": op.iso(run.cutoff) or op.iso(retention.retention_cutoff(op.now_of(args), keep)),
                "removed": run.cutoff is not None,
                "created": run.created,
                "months": run.months,
                "readings": run.rows,
                "problems": run.problems,
                "actor": actor,
            }
        )
    else:
        for name in run.created:
            print(f"created partition {name}")
        if run.cutoff is None:
            print("freeze precondition NOT met: nothing was removed")
            for problem in run.problems:
                print(f"  {problem}")
        else:
            months = f" (partitions dropped: {', '.join(run.months)})" if run.months else ""
            print(f"removed {run.rows} readings taken before {op.iso(run.cutoff)}{months}; audited as {actor}")
            for problem in run.problems:
                print(f"  {problem}")
    return 0 if run.cutoff is not None and not run.problems else op.EXIT_REFUSED


def _preview(args: argparse.Namespace, keep: int) -> int:
    from powergate.services import retention

    with op.engine_of(args) as engine, engine.connect() as conn:
        found = retention.preview_retention(conn, op.now_of(args), keep, exact=args.exact)
    if args.format == "json":
        op.print_json(
            {
                "apply": False,
                "keep_months": keep,
                "cutoff": op.iso(found.cutoff),
                "partitioned": found.partitioned,
                "drop_partitions": [_size_json(p) for p in found.months],
                "delete": [_size_json(p) for p in found.deleted],
                "readings": found.rows,
                "freeze_ok": not found.problems,
                "problems": found.problems,
            }
        )
        return 0
    print(f"dry run: keep {keep} months; readings taken before {op.iso(found.cutoff)} would be removed")
    if found.months:
        print("partitions dropped whole:")
        op.print_table(("MONTH", "PARTITION", "READINGS"), [(_month(p), p.name, _rows(p)) for p in found.months])
    where = "readings_default" if found.partitioned else "readings"
    deleted = sum(p.rows or 0 for p in found.deleted)
    months = f" (months {', '.join(_month(p) for p in found.deleted)})" if found.deleted else ""
    print(f"deleted from {where}: {deleted} readings{months}")
    if found.rows is None:
        print("in all: unknown (a partition's size is not estimated yet: --exact counts them)")
    else:
        estimated = " (estimated: --exact counts them)" if any(p.estimated for p in found.months) else ""
        print(f"in all: {found.rows} readings{estimated}")
    if found.problems:
        print("freeze precondition NOT met: --apply would remove nothing until these freezes have run")
        for problem in found.problems:
            print(f"  {problem}")
    else:
        print("freeze precondition met: every freeze scope has frozen past the cutoff")
    print("nothing was changed; add --apply --reason TEXT to remove them")
    return 0
