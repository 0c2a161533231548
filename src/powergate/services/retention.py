"""The daily ``readings`` job: partition maintenance and the retention of raw readings.

Once a day (a keyed run, ``freeze.claim``, so once across every scheduler process) the job creates the
coming months' partitions of ``readings`` (PostgreSQL, ``store.partitions.ensure_partitions``) and, when a
retention is configured (``scheduler.readings_keep_months``), removes the raw readings older than the first
day (UTC) of the month ``keep_months`` months before the current one: whole monthly partitions on PostgreSQL,
bounded DELETEs on SQLite.

What is kept, and why dropping is safe:
- the ledger (entries and postings, each a reading's charge with its key ``reading:<id>``), balances, daily and
  monthly freezes, settlements and the audit log are never touched: money stays exact and auditable;
- the meters' rating states hold the last reading's registers, so ingest continues exactly after a drop;
- the readings still needed are kept: retention refuses to run until every freeze scope (site, or time zone
  of meters without a site) has completed its daily freeze of the cutoff's local day, and at least
  ``MIN_KEEP_MONTHS`` months are kept, more than freeze catch-up (``freeze.MAX_CATCH_UP_DAYS``) and the daily
  reconciliation (``notices.DAYS_OF_HISTORY``) ever look back.

Each removal is written to the audit log (actor ``scheduler``, action ``drop_readings``) in the transaction that
removes the rows: with the cutoff, the months dropped and the number of readings. PostgreSQL removes everything
in one transaction; SQLite in transactions of at most ``ROWS_PER_TRANSACTION`` readings (each with its own
audit record), so ingest is never kept waiting for long; an interrupted run is finished by the next one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from powergate.services import freeze
from powergate.services.notices import DAYS_OF_HISTORY
from powergate.store import partitions
from powergate.store.audit import MAX_REASON_CHARS, record_audit

JOB = "readings_maintenance"
ACTOR = "scheduler"
MIN_KEEP_MONTHS = 3
MAX_KEEP_MONTHS = 1_200
AHEAD_MONTHS = 2
ROWS_PER_TRANSACTION = 100_000
"""SQLite: bound on the readings one retention transaction deletes."""
MAX_TRANSACTIONS = 1_000
"""Bound on the SQLite transactions of one run (1e8 readings); the next day's run continues."""

# a cutoff is at least MIN_KEEP_MONTHS whole months (>= 28 days each) back, more than freezes and reconciliation reach
assert max(freeze.MAX_CATCH_UP_DAYS, DAYS_OF_HISTORY) + 2 < MIN_KEEP_MONTHS * 28, "retention below freeze needs"


@dataclass(slots=True)
class RetentionRun:
    period: str
    claim: freeze.Claim | None
    """The daily run's claim; None for a run an operator asked for (``apply_retention``, not keyed)."""
    created: list[str] = field(default_factory=list)
    """Partitions created (PostgreSQL)."""
    cutoff: dt.datetime | None = None
    """Readings before this instant were removed (None: retention off, or refused)."""
    months: list[str] = field(default_factory=list)
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.claim is None or self.claim in (freeze.Claim.CLAIMED, freeze.Claim.TAKEN_OVER)

    def summary(self) -> str | None:
        if not self.ran or not (self.created or self.rows or self.months or self.problems):
            return None
        parts = [f"{len(self.created)} partitions created", f"{self.rows} readings dropped"]
        if self.months:
            parts.append(f"months {', '.join(self.months)}")
        if self.problems:
            parts.append(f"{len(self.problems)} problems")
        return ", ".join(parts)


def check_keep_months(keep_months: int) -> None:
    """0 (keep every reading) or ``MIN_KEEP_MONTHS``..``MAX_KEEP_MONTHS``; a ValueError names the fault."""
    if keep_months != 0 and not MIN_KEEP_MONTHS <= keep_months <= MAX_KEEP_MONTHS:
        raise ValueError(
            f"readings_keep_months: {keep_months} is not allowed; use 0 (keep every reading) or"
            f" {MIN_KEEP_MONTHS}..{MAX_KEEP_MONTHS} months (freezes and reconciliation need the recent ones)"
        )


def retention_cutoff(now: dt.datetime, keep_months: int) -> dt.datetime:
    """The first instant (UTC) of the month ``keep_months`` months before the month of ``now``."""
    return partitions.month_start(partitions.add_months(partitions.month_of(now), -keep_months))


def freeze_gaps(conn: Connection, cutoff: dt.datetime) -> list[str]:
    """Why readings before ``cutoff`` are still needed: freeze scopes whose daily freeze has not passed it."""
    sites = [int(s) for (s,) in conn.execute(text("SELECT id FROM sites ORDER BY id"))]
    zones = conn.execute(
        text(
            "SELECT DISTINCT m.timezone FROM meters m WHERE NOT EXISTS"
            " (SELECT 1 FROM meter_assignments ma WHERE ma.meter_id = m.id) ORDER BY 1"
        )
    ).scalars()
    scopes: list[int | str] = [*sites, *(str(z) for z in zones)]
    gaps = []
    for site_or_zone in scopes:
        scope = freeze.scope_of(conn, site_or_zone)
        needed = cutoff.astimezone(scope.zone).date()
        last = freeze.last_completed_day(conn, scope)
        if last is None or last < needed:
            done = "no daily freeze yet" if last is None else f"daily freezes only up to {last}"
            gaps.append(f"{scope.name}: {done}; readings before {cutoff.isoformat()} need the freeze of {needed}")
    return gaps


def run_retention(engine: Engine, now: dt.datetime, keep_months: int, *, owner: str | None = None) -> RetentionRun:
    """The day's partition maintenance and retention, once across processes (keyed by the UTC day)."""
    check_keep_months(keep_months)
    owner = owner or freeze.default_owner()
    period = now.astimezone(dt.UTC).date().isoformat()
    run = RetentionRun(period, freeze.claim(engine, JOB, period, owner, now))
    if not run.ran:
        return run
    _maintain(engine, run, now, keep_months, ACTOR, None)
    with engine.begin() as conn:
        freeze.finish_claim(conn, JOB, period, owner, now)
    return run


def apply_retention(engine: Engine, now: dt.datetime, keep_months: int, *, actor: str, reason: str) -> RetentionRun:
    """What the daily job does, now, for an operator (``powergate readings retention --apply``).

    Not keyed by the day (the operator asked for it; the daily run may have happened already), and the same
    steps as ``run_retention``: partitions ahead, the freeze precondition, then the bounded drops, each audited
    with ``actor`` and ``reason``. Safe next to the daily job: partition maintenance takes an advisory lock
    (PostgreSQL), SQLite has one writer, and dropping what is already gone removes nothing.
    """
    check_keep_months(keep_months)
    assert actor.strip() and reason.strip(), "who and why are required"
    run = RetentionRun(f"manual:{now.astimezone(dt.UTC).isoformat()}", None)
    _maintain(engine, run, now, keep_months, actor, reason)
    return run


def _maintain(
    engine: Engine, run: RetentionRun, now: dt.datetime, keep_months: int, actor: str, reason: str | None
) -> None:
    with engine.begin() as conn:
        run.created = partitions.ensure_partitions(conn, now, AHEAD_MONTHS)
    cutoff = retention_cutoff(now, keep_months) if keep_months else None
    if cutoff is not None:
        with engine.connect() as conn:
            run.problems = freeze_gaps(conn, cutoff)
        if not run.problems:
            run.cutoff = cutoff
            _drop(engine, run, cutoff, keep_months, now, actor, reason)


def _drop(
    engine: Engine,
    run: RetentionRun,
    cutoff: dt.datetime,
    keep_months: int,
    now: dt.datetime,
    actor: str = ACTOR,
    reason: str | None = None,
) -> None:
    policy = f"retention: keep {keep_months} months of raw readings; readings before {cutoff.isoformat()}"
    for _ in range(MAX_TRANSACTIONS):
        with engine.begin() as conn:
            dropped = partitions.drop_readings_before(conn, cutoff, max_rows=ROWS_PER_TRANSACTION)
            if dropped.rows or dropped.months:
                record_audit(
                    conn,
                    actor,
                    "drop_readings",
                    "table:readings",
                    policy if reason is None else f"{reason} ({policy})"[:MAX_REASON_CHARS],
                    {
                        "cutoff": cutoff.isoformat(),
                        "keep_months": keep_months,
                        "months": dropped.months,
                        "rows": dropped.rows,
                        "complete": dropped.done,
                    },
                    now,
                )
            run.months += dropped.months
            run.rows += dropped.rows
        if dropped.done:
            return
    run.problems.append(f"stopped after {MAX_TRANSACTIONS} transactions; the next run continues")


# -- the dry run (``powergate readings retention`` without ``--apply``) -------------------------------------------


@dataclass(slots=True)
class RetentionPreview:
    """What ``apply_retention`` would remove now, and whether it may (``problems`` empty)."""

    keep_months: int
    cutoff: dt.datetime
    partitioned: bool
    months: list[partitions.PartitionSize] = field(default_factory=list)
    """PostgreSQL: the monthly partitions that would be dropped whole (row counts estimated unless exact)."""
    deleted: list[partitions.PartitionSize] = field(default_factory=list)
    """Readings that would be deleted row by row, per month (SQLite: all; PostgreSQL: the default partition's)."""
    problems: list[str] = field(default_factory=list)
    """The freeze precondition's gaps: while any is left, nothing would be removed."""

    @property
    def rows(self) -> int | None:
        """Readings that would go; None when a partition's size has never been estimated."""
        sizes = [p.rows for p in (*self.months, *self.deleted)]
        return None if None in sizes else sum(n for n in sizes if n is not None)


def preview_retention(conn: Connection, now: dt.datetime, keep_months: int, *, exact: bool = False) -> RetentionPreview:
    """A dry run of ``apply_retention``: the cutoff, what lies before it, and the freeze precondition. Reads only."""
    check_keep_months(keep_months)
    if keep_months == 0:
        raise ValueError("readings_keep_months: 0 keeps every reading; nothing to preview")
    cutoff = retention_cutoff(now, keep_months)
    partitioned = partitions.is_partitioned(conn)
    preview = RetentionPreview(keep_months, cutoff, partitioned)
    if partitioned:
        preview.months = [
            p
            for p in partitions.partition_sizes(conn, exact=exact)
            if p.month is not None and partitions.month_start(partitions.add_months(p.month, 1)) <= cutoff
        ]
        preview.deleted = partitions.months_held(conn, partitions.DEFAULT_PARTITION, before=cutoff)
    else:
        preview.deleted = partitions.months_held(conn, before=cutoff)
    preview.problems = freeze_gaps(conn, cutoff)
    return preview
