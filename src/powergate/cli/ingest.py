"""``powergate ingest status|failed|requeue``: the ingest queue (head-ends in ``headend.ingest = "queue"`` mode).

    powergate ingest status                                   queued and parked batches, age of the oldest queued
    powergate ingest failed [--limit N]                       the parked batches: id, source, count, attempts, why
    powergate ingest requeue (--id N [--id M ...] | --all) --reason TEXT [--actor WHO]

A requeue is all or nothing: an id that is unknown or not parked refuses the whole request (exit 1, nothing
changed). Each batch put back is audited (``requeue_ingest_batch``, subject ``ingest_batch:<id>``) with who asked
(``--actor``, default ``cli:<OS user>``) and why, in the transaction that requeues it. ``--format json`` on every
action (``powergate ingest status --format json``); ``--url`` before the action, as for the other commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from powergate.cli import _operator as op

DEFAULT_LIST = 100


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ingest", help="the ingest queue: backlog, parked batches, requeue")
    op.add_url(parser)
    op.add_now(parser)
    commands = parser.add_subparsers(title="ingest commands", metavar="ACTION", required=True)
    status = commands.add_parser("status", help="queued and parked batches; age of the oldest queued one")
    op.add_format(status)
    status.set_defaults(handler=_status)
    failed = commands.add_parser("failed", help="list the batches parked after failing (oldest first)")
    failed.add_argument("--limit", type=int, default=DEFAULT_LIST, help=f"at most this many (default {DEFAULT_LIST})")
    op.add_format(failed)
    failed.set_defaults(handler=_failed)
    requeue = commands.add_parser("requeue", help="put parked batches back in the queue (audited)")
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", metavar="N", help="a parked batch (repeat)")
    which.add_argument("--all", action="store_true", help="every parked batch")
    requeue.add_argument("--reason", required=True, help="why (audited), e.g. 'meter M-7 fixed, ticket 4411'")
    op.add_actor(requeue)
    op.add_format(requeue)
    requeue.set_defaults(handler=_requeue)


def _status(args: argparse.Namespace) -> int:
    from powergate.services import ingest_queue

    now = op.now_of(args)
    with op.engine_of(args) as engine, engine.connect() as conn:
        found = ingest_queue.status(conn)
    age_s = None if found.oldest_queued_at is None else int((now - found.oldest_queued_at).total_seconds())
    if args.format == "json":
        op.print_json(
            {
                "queued": found.queued,
                "failed": found.failed,
                "oldest_queued_at": op.iso(found.oldest_queued_at),
                "oldest_queued_age_s": age_s,
            }
        )
        return 0
    oldest = "" if age_s is None else f" (oldest enqueued {op.shown(found.oldest_queued_at)}, {op.age(age_s)} ago)"
    print(f"queued: {found.queued} batches{oldest}")
    hint = " (list them: powergate ingest failed)" if found.failed else ""
    print(f"failed: {found.failed} batches parked{hint}")
    return 0


def _failed(args: argparse.Namespace) -> int:
    from powergate.services import ingest_queue

    if not 1 <= args.limit <= ingest_queue.MAX_LIST_BATCHES:
        return op.usage("limit", f"1..{ingest_queue.MAX_LIST_BATCHES}, got {args.limit}")
    with op.engine_of(args) as engine, engine.connect() as conn:
        found = ingest_queue.parked(conn, limit=args.limit)
        total = ingest_queue.counts(conn)["failed"]
    if args.format == "json":
        op.print_json({"failed": total, "batches": [_batch_json(b) for b in found]})
        return 0
    if not found:
        print("no parked batches")
        return 0
    op.print_table(
        ("ID", "SOURCE", "READINGS", "ATTEMPTS", "FAILED AT", "REASON"),
        [(b.batch_id, b.source, b.count, b.attempts, op.shown(b.failed_at), _one_line(b.reason)) for b in found],
    )
    if total > len(found):
        print(f"({len(found)} of {total} parked batches shown; --limit N for more)")
    return 0


def _requeue(args: argparse.Namespace) -> int:
    from powergate.services import ingest_queue

    actor = op.actor_of(args)
    if actor is None:
        return op.EXIT_USAGE
    if not args.reason.strip():
        return op.usage("reason", "say why the batches are requeued")
    with op.engine_of(args) as engine, engine.begin() as conn:
        done = ingest_queue.requeue_parked(
            conn, None if args.all else args.ids, actor=actor, reason=args.reason.strip(), now=op.now_of(args)
        )
    if isinstance(done, ingest_queue.Refused):  # refused before writing anything
        return op.refused(done.field, done.message)
    ids = [b.batch_id for b in done]
    if args.format == "json":
        op.print_json({"requeued": ids, "readings": sum(b.count for b in done), "actor": actor})
    elif not done:
        print("no parked batches: nothing to requeue")
    else:
        listed = ", ".join(map(str, ids))
        print(f"requeued {len(ids)} batches ({sum(b.count for b in done)} readings): {listed}; audited as {actor}")
        if args.all and len(ids) == ingest_queue.MAX_LIST_BATCHES:
            print(f"(at most {ingest_queue.MAX_LIST_BATCHES} at a time: run it again for the rest)")
    return 0


def _batch_json(batch: Any) -> dict[str, object]:
    return {
        "id": batch.batch_id,
        "source": batch.source,
        "count": batch.count,
        "attempts": batch.attempts,
        "reason": batch.reason,
        "enqueued_at": op.iso(batch.enqueued_at),
        "failed_at": op.iso(batch.failed_at),
    }


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
