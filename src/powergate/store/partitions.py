"""Monthly partitions of ``readings`` (PostgreSQL) and the removal of old raw readings (both databases).

On PostgreSQL ``readings`` is partitioned by RANGE on ``at`` (migration 0021): one partition per UTC month,
``readings_YYYY_MM``, and ``readings_default`` for any reading of a month without one, so no reading is ever
refused. ``ensure_partitions`` creates the coming months ahead of time; ``drop_readings_before`` removes whole
months older than a cutoff. On SQLite the table is not partitioned: ``ensure_partitions`` does nothing and
``drop_readings_before`` deletes in bounded statements.

Invariants:
- A partition covers exactly one UTC month [first day 00:00Z, next first day 00:00Z); its name says which.
- Creating a month is idempotent and never loses a reading: rows of that month already in the default
  partition are moved into the new partition in the same transaction (the default partition is locked first,
  so no writer adds one between the move and the attach). Maintenance runs one at a time (an advisory lock).
- Only whole months entirely before the cutoff are dropped (detached, then dropped); readings of the default
  partition before the cutoff are deleted in bounded statements. Nothing else is touched: the meters' rating
  states (which hold the last reading's registers) stay, so ingest continues exactly after a drop.
- Every statement is bounded (``DELETE_CHUNK`` rows, ``MAX_AHEAD_MONTHS`` months).

Callers hold the transaction; ``services.retention`` decides when dropping is safe and audits it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from sqlalchemy import Connection

PARENT = "readings"
DEFAULT_PARTITION = "readings_default"
PARTITION_NAME = re.compile(r"^readings_(\d{4})_(\d{2})$")
"""``readings_YYYY_MM``: the monthly partitions (and only them) are named so."""
MAX_AHEAD_MONTHS = 24
DELETE_CHUNK = 10_000
"""Bound on the readings one DELETE statement removes."""
LOCK_TIMEOUT_S = 30
"""Bound on the wait for a table lock during maintenance."""
MAINTENANCE_LOCK = 0x5047_5041_5254  # "PGPART": serialises partition maintenance across processes


@dataclass(slots=True)
class Dropped:
    """What ``drop_readings_before`` removed."""

    months: list[str] = field(default_factory=list)
    """The months dropped whole (``YYYY-MM``), oldest first; empty on SQLite."""
    rows: int = 0
    """Readings removed, in the dropped months and by DELETE."""
    done: bool = True
    """False when ``max_rows`` stopped the deletes early: call again (in a new transaction) for the rest."""


def is_partition_name(name: str | None) -> bool:
    """A partition of ``readings`` (monthly or default): tables the schema definitions do not declare."""
    return name is not None and (name == DEFAULT_PARTITION or PARTITION_NAME.match(name) is not None)


def month_of(at: dt.datetime) -> dt.date:
    """The first day of the UTC month of ``at``."""
    assert at.tzinfo is not None, f"naive datetime {at!r}"
    return at.astimezone(dt.UTC).date().replace(day=1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def month_start(month: dt.date) -> dt.datetime:
    return dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)


def partition_name(month: dt.date) -> str:
    return f"{PARENT}_{month.year:04d}_{month.month:02d}"


def is_partitioned(conn: Connection) -> bool:
    """Whether ``readings`` is a partitioned table here (PostgreSQL after migration 0021)."""
    if conn.dialect.name != "postgresql":
        return False
    found = conn.exec_driver_sql(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
        " WHERE c.relname = %s AND c.relnamespace = to_regnamespace(current_schema())",
        (PARENT,),
    ).first()
    return found is not None


def partitions(conn: Connection) -> list[str]:
    """The partitions of ``readings`` by name, sorted (``readings_default`` last); empty when not partitioned."""
    if not is_partitioned(conn):
        return []
    names = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (PARENT,),
    ).scalars()
    return sorted((str(n) for n in names), key=lambda n: (n == DEFAULT_PARTITION, n))


def monthly_partitions(conn: Connection) -> dict[dt.date, str]:
    """First day of the month -> its partition's name."""
    found: dict[dt.date, str] = {}
    for name in partitions(conn):
        match = PARTITION_NAME.match(name)
        if match is not None:
            found[dt.date(int(match[1]), int(match[2]), 1)] = name
    return found


def _lock(conn: Connection) -> None:
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
    # Attaching and detaching lock the table briefly; behind a long query, give up (the job runs again later)
    # rather than queue every ingest and console query behind the waiting lock.
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")


def ensure_partitions(conn: Connection, now: dt.datetime, ahead_months: int = 2) -> list[str]:
    """Create the partitions of this month and the next ``ahead_months`` that do not exist yet.

    Returns the names created (none when all exist, or on SQLite). Readings of those months that already sit
    in the default partition are moved into the new partition.
    """
    if not 0 <= ahead_months <= MAX_AHEAD_MONTHS:
        raise ValueError(f"ahead_months must be 0..{MAX_AHEAD_MONTHS}, got {ahead_months}")
    if not is_partitioned(conn):
        return []
    _lock(conn)
    existing = monthly_partitions(conn)
    first = month_of(now)
    created = []
    for offset in range(ahead_months + 1):
        month = add_months(first, offset)
        if month not in existing:
            create_month(conn, month)
            created.append(partition_name(month))
    return created


def create_month(conn: Connection, month: dt.date) -> None:
    """Create (and attach) the partition of ``month``, moving its readings out of the default partition."""
    assert month.day == 1, month
    name = partition_name(month)
    start, end = month_start(month).isoformat(), month_start(add_months(month, 1)).isoformat()
    # No writer may add a reading of this month to the default partition between the move and the attach.
    conn.exec_driver_sql(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE at >= %s AND at < %s RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved",
        (start, end),
    )
    conn.exec_driver_sql(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ('{start}') TO ('{end}')")


def drop_readings_before(conn: Connection, cutoff: dt.datetime, *, max_rows: int | None = None) -> Dropped:
    """Remove the readings taken before ``cutoff``, which must be the first instant of a UTC month.

    PostgreSQL (partitioned): every monthly partition that ends at or before ``cutoff`` is detached and dropped,
    and readings before ``cutoff`` in the default partition are deleted. Otherwise (SQLite): readings before
    ``cutoff`` are deleted meter by meter (the (meter_id, at) index) in statements of at most ``DELETE_CHUNK``
    rows; ``max_rows`` bounds the whole call (``done`` says whether everything was removed).
    """
    assert cutoff.tzinfo is not None and month_start(month_of(cutoff)) == cutoff, f"cutoff {cutoff} is not a month"
    result = Dropped()
    if is_partitioned(conn):
        _lock(conn)
        for month, name in sorted(monthly_partitions(conn).items()):
            if month_start(add_months(month, 1)) > cutoff:
                break
            count = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {name}").scalar_one()
            conn.exec_driver_sql(f"ALTER TABLE {PARENT} DETACH PARTITION {name}")
            conn.exec_driver_sql(f"DROP TABLE {name}")
            result.months.append(f"{month:%Y-%m}")
            result.rows += int(count)
        table = DEFAULT_PARTITION
    else:
        table = PARENT
    _delete_before(conn, table, cutoff, result, max_rows)
    return result


def _delete_before(conn: Connection, table: str, cutoff: dt.datetime, result: Dropped, max_rows: int | None) -> None:
    sqlite = conn.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    bound = cutoff.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if sqlite else cutoff
    # SQLite: every meter, each an index seek on (meter_id, at) (no full scan); PostgreSQL: the default
    # partition is small, so the meters it holds readings of before the cutoff.
    query = "SELECT id FROM meters" if sqlite else f"SELECT DISTINCT meter_id FROM {table} WHERE at < %s"
    meters = [str(m) for m in conn.exec_driver_sql(query, () if sqlite else (bound,)).scalars()]
    key = "rowid" if sqlite else "ctid"
    budget = max_rows
    for meter_id in sorted(meters):
        while True:
            chunk = DELETE_CHUNK if budget is None else min(DELETE_CHUNK, budget)
            if chunk == 0:
                result.done = False
                return
            deleted = conn.exec_driver_sql(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
                f" WHERE meter_id = {mark} AND at < {mark} LIMIT {chunk})",
                (meter_id, bound),
            ).rowcount
            result.rows += deleted
            if budget is not None:
                budget -= deleted
            if deleted < chunk:
                break


# -- looking at what is held (operators: ``powergate readings partitions``) --------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionSize:
    """A partition of ``readings`` (PostgreSQL) or a month of readings held (SQLite) and its readings."""

    month: dt.date | None
    """The month it holds; None for the default partition (any month without a partition of its own)."""
    name: str | None
    """The partition's table; None on SQLite (not partitioned)."""
    rows: int | None
    """Readings held: counted, or the planner's estimate (``estimated``); None when never estimated."""
    estimated: bool


def partition_sizes(conn: Connection, *, exact: bool = False) -> list[PartitionSize]:
    """Each partition of ``readings``, oldest month first and the default partition last (PostgreSQL).

    Monthly partitions carry the planner's estimate (``pg_class.reltuples``, kept by autovacuum's ANALYZE; None
    before the first) unless ``exact`` counts them (a full scan of each: seconds per month on large tables).
    The default partition is always counted: it is small unless something is wrong. Empty when not partitioned.
    """
    if not is_partitioned(conn):
        return []
    found = []
    for name in partitions(conn):
        match = PARTITION_NAME.match(name)
        month = dt.date(int(match[1]), int(match[2]), 1) if match is not None else None
        if exact or month is None:
            count = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {name}").scalar_one()
            found.append(PartitionSize(month, name, int(count), estimated=False))
            continue
        tuples = conn.exec_driver_sql("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (name,)).scalar()
        rows = None if tuples is None or tuples < 0 else round(tuples)
        found.append(PartitionSize(month, name, rows, estimated=True))
    return found


def months_held(conn: Connection, table: str = PARENT, *, before: dt.datetime | None = None) -> list[PartitionSize]:
    """The UTC months ``table`` holds readings of (all, or before ``before``), with exact counts, oldest first.

    A full scan (of the (meter_id, at) index on SQLite): for SQLite's ``readings`` and PostgreSQL's default
    partition, both small enough to count.
    """
    assert table in (PARENT, DEFAULT_PARTITION), table
    sqlite = conn.dialect.name == "sqlite"
    month = "substr(at, 1, 7)" if sqlite else "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM')"
    where = ""
    params: tuple[object, ...] = ()
    if before is not None:
        bound = before.astimezone(dt.UTC)
        where = " WHERE at < ?" if sqlite else " WHERE at < %s"
        params = (bound.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if sqlite else bound,)
    rows = conn.exec_driver_sql(f"SELECT {month}, COUNT(*) FROM {table}{where} GROUP BY 1 ORDER BY 1", params)
    return [
        PartitionSize(dt.date(int(text[:4]), int(text[5:7]), 1), None, int(count), estimated=False)
        for text, count in rows
    ]
