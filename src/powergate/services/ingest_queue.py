"""The ingest queue: head-ends hand batches of readings to the workers, which rate and book them exactly once.

With ``headend.ingest = "queue"`` a head-end does not rate: each batch of readings becomes one row of
``ingest_batches`` (``enqueue``: one INSERT, whose commit wakes the workers through ``store.wakeup``). The
workers' ``ingest`` job (``IngestQueue.drain``) takes the batches oldest first, one at a time:

- claim: ``SELECT ... ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers each take a
  different batch and never wait for one another; on SQLite (one writer at a time, ``BEGIN IMMEDIATE``) the
  plain oldest row;
- ingest it with ``Ingestor.ingest_in`` on the same connection (readings, ledger entries, balance decisions);
- delete the row, and commit all of it at once.

Invariants:
- Exactly once: the readings and the deletion of their batch commit together or not at all. A worker killed
  mid-batch holds the row's lock only until its connection dies (PostgreSQL rolls the transaction back), then
  another worker takes it. And should a batch ever be ingested twice, its readings are duplicates by id.
- A bad batch does not block the queue: an error that is not transient (a payload that does not decode, a
  reading that breaks an invariant) counts an attempt on the row, in the claiming transaction (the failed
  ingest is rolled back to a savepoint first); after ``max_attempts`` the batch is parked (``state = 'failed'``
  with the reason) and the queue moves on. A transient error (the database went away, a deadlock, a lock
  timeout) counts nothing: the transaction rolls back and the batch is taken again.
- Bounded: a batch holds at most ``ingest.MAX_BATCH`` readings (larger inputs are split at enqueue), a payload
  at most ``MAX_PAYLOAD_CHARS``, and one ``drain`` at most ``max_batches`` batches or ``max_s`` seconds, so the
  worker's other jobs (the outbox relay that turns the trips decided here into commands) keep their turn.

The payload is JSON text: ``{"format": 1, "readings": [[id, meter id, ISO time, total Wh, bands or null,
kind], ...]}``, one array per reading in ``domain.rating.Reading`` field order; bands are the four Wh
registers (sharp, peak, flat, valley).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from powergate.domain.rating import Reading, ReadingKind
from powergate.services.ingest import MAX_BATCH, Ingestor, IngestReport
from powergate.store.audit import MAX_REASON_CHARS, record_audit
from powergate.store.tables_ingest_queue import ingest_batches

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
FORMAT = 1
DEFAULT_MAX_ATTEMPTS = 3
MAX_PAYLOAD_CHARS = 64 * 1024 * 1024
"""A payload longer than this is refused at enqueue and parked at ingest (20,000 readings take ~3 MB)."""
MAX_ERROR_CHARS = 1000
MAX_SOURCE_CHARS = 64
DEFAULT_DRAIN_BATCHES = 100
DEFAULT_DRAIN_S = 0.5


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BadBatch(ValueError):
    """A payload that is not a batch of readings; the message says which reading and field."""


# -- the payload ------------------------------------------------------------------------------------------------


def encode(readings: Sequence[Reading]) -> str:
    """The readings as compact JSON text (``decode`` gives them back equal); a naive time is a ValueError."""
    naive = next((r.reading_id for r in readings if r.at.tzinfo is None), None)
    if naive is not None:
        raise ValueError(f"reading {naive!r}: time has no UTC offset")
    rows = [
        [r.reading_id, r.meter_id, r.at.isoformat(), r.total_wh, list(r.bands_wh) if r.bands_wh else None, r.kind]
        for r in readings
    ]
    return json.dumps({"format": FORMAT, "readings": rows}, separators=(",", ":"), ensure_ascii=False)


def decode(payload: str) -> list[Reading]:
    """The readings of a payload; ``BadBatch`` naming the reading and field at fault."""
    if len(payload) > MAX_PAYLOAD_CHARS:
        raise BadBatch(f"payload is {len(payload)} characters, more than {MAX_PAYLOAD_CHARS}")
    try:
        document = json.loads(payload)
    except ValueError as error:
        raise BadBatch(f"payload is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadBatch(f"payload is not an ingest batch of format {FORMAT}")
    rows = document.get("readings")
    if not isinstance(rows, list) or not rows or len(rows) > MAX_BATCH:
        raise BadBatch(f"payload 'readings' must be a list of 1..{MAX_BATCH} readings")
    return [_reading(index, row) for index, row in enumerate(rows)]


def _reading(index: int, row: Any) -> Reading:
    where = f"reading {index}"
    if not isinstance(row, list) or len(row) != 6:
        raise BadBatch(f"{where}: expected [id, meter id, time, total Wh, bands, kind], got {str(row)[:100]}")
    reading_id, meter_id, at, total_wh, bands, kind = row
    if not isinstance(reading_id, str) or not reading_id:
        raise BadBatch(f"{where}: id must be non-empty text, got {reading_id!r}")
    where = f"reading {reading_id!r}"
    if not isinstance(meter_id, str) or not meter_id:
        raise BadBatch(f"{where}: meter id must be non-empty text, got {meter_id!r}")
    try:
        instant = dt.datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise BadBatch(f"{where}: time must be ISO 8601 with a UTC offset, got {at!r}")
    if not _is_int(total_wh) or total_wh < 0:
        raise BadBatch(f"{where}: total Wh must be a whole number >= 0, got {total_wh!r}")
    if bands is not None and not (
        isinstance(bands, list) and len(bands) == 4 and all(_is_int(b) and b >= 0 for b in bands)
    ):
        raise BadBatch(f"{where}: bands must be null or four whole numbers >= 0, got {bands!r}")
    try:
        reading_kind = ReadingKind(kind)
    except ValueError:
        raise BadBatch(f"{where}: kind must be one of {', '.join(ReadingKind)}, got {kind!r}") from None
    band_tuple = (bands[0], bands[1], bands[2], bands[3]) if bands is not None else None
    return Reading(reading_id, meter_id, instant.astimezone(dt.UTC), total_wh, band_tuple, reading_kind)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the head-end side --------------------------------------------------------------------------------------------


def enqueue(conn: Connection, source: str, readings: Sequence[Reading], now: dt.datetime) -> list[int]:
    """Queue ``readings`` for the workers (one row per ``MAX_BATCH`` readings); the ids of the rows written.

    The commit of the caller's transaction wakes the workers (``store.wakeup``: the INSERT is watched)."""
    if not source or len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"source must be 1..{MAX_SOURCE_CHARS} characters, got {source!r}")
    ids: list[int] = []
    for start in range(0, len(readings), MAX_BATCH):
        part = readings[start : start + MAX_BATCH]
        payload = encode(part)
        if len(payload) > MAX_PAYLOAD_CHARS:
            raise ValueError(f"a batch of {len(part)} readings encodes to {len(payload)} characters; split it")
        row = {"enqueued_at": now, "source": source, "payload": payload, "count": len(part)}
        ids.append(int(conn.execute(insert(ingest_batches).values(row).returning(ingest_batches.c.id)).scalar_one()))
    return ids


def enqueue_batch(engine: Engine, source: str, readings: Sequence[Reading], now: dt.datetime) -> list[int]:
    """``enqueue`` in a transaction of its own."""
    if not readings:
        return []
    with engine.begin() as conn:
        return enqueue(conn, source, readings, now)


# -- the worker side ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    batch_id: int
    source: str
    payload: str
    count: int
    attempts: int


@dataclass(slots=True)
class DrainReport:
    """What one ``drain`` did."""

    batches: int = 0
    readings: int = 0
    rated: int = 0
    skipped: int = 0
    quarantined: int = 0
    duplicates: int = 0
    rejected: int = 0
    failures: int = 0
    """Attempts that failed with an error that is not transient (each counted on its batch)."""
    parked: list[tuple[int, str]] = field(default_factory=list)
    """(batch id, reason) of batches parked as failed."""
    more: bool = False
    """True when the drain stopped at its limit with batches still queued."""

    def add(self, report: IngestReport, count: int) -> None:
        self.batches += 1
        self.readings += count
        self.rated += report.rated
        self.skipped += report.skipped
        self.quarantined += report.quarantined
        self.duplicates += report.duplicates
        self.rejected += len(report.rejected)

    def summary(self) -> str | None:
        if not (self.batches or self.failures):
            return None
        text = (
            f"{self.batches} batches, {self.readings} readings ({self.rated} rated, {self.quarantined} quarantined,"
            f" {self.rejected} rejected)"
        )
        if self.failures:
            text += f"; {self.failures} failed attempts, {len(self.parked)} batches parked"
        return text


@dataclass(slots=True)
class QueueTotals:
    """Since the worker started (for logs, tests and the job's stats)."""

    batches: int = 0
    readings: int = 0
    failures: int = 0
    parked: int = 0


def claim(conn: Connection) -> Claimed | None:
    """The oldest queued batch, locked for this transaction (PostgreSQL: skipping batches others hold)."""
    query = (
        select(
            ingest_batches.c.id,
            ingest_batches.c.source,
            ingest_batches.c.payload,
            ingest_batches.c.count,
            ingest_batches.c.attempts,
        )
        .where(ingest_batches.c.state == "queued")
        .order_by(ingest_batches.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # SQLite renders no FOR UPDATE: BEGIN IMMEDIATE holds the one writer
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    batch_id, source, payload, count, attempts = row  # (a Row's .count is tuple.count)
    return Claimed(int(batch_id), str(source), str(payload), int(count), int(attempts))


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying as they are: the database went away, a deadlock, a lock or statement timeout."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError)


class IngestQueue:
    """The worker side: claims batches and ingests them, one transaction each. Safe in several processes."""

    def __init__(
        self,
        engine: Engine,
        ingestor: Ingestor,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        clock: Clock = utc_now,
    ) -> None:
        assert 1 <= max_attempts <= 100, max_attempts
        self.engine = engine
        self.ingestor = ingestor
        self.max_attempts = max_attempts
        self.clock = clock
        self.totals = QueueTotals()

    def ingest_one(self, report: DrainReport) -> bool:
        """Claim the oldest batch and ingest it (or count its failure); False when the queue is empty."""
        with self.engine.begin() as conn:
            claimed = claim(conn)
            if claimed is None:
                return False
            try:
                readings = decode(claimed.payload)
                done = self.ingestor.ingest_in(conn, readings)
            except Exception as error:
                if is_transient(error):
                    raise  # the transaction rolls back; the batch is taken again, no attempt counted
                self._failed(conn, claimed, error, report)
                return True
            conn.execute(delete(ingest_batches).where(ingest_batches.c.id == claimed.batch_id))
        report.add(done, len(readings))
        self.totals.batches += 1
        self.totals.readings += len(readings)
        for reading_id, reason in done.rejected:
            log.warning("reading %s (batch %d from %s) rejected: %s", reading_id, claimed.batch_id, claimed.source,
                        reason)  # fmt: skip
        return True

    def _failed(self, conn: Connection, claimed: Claimed, error: Exception, report: DrainReport) -> None:
        self.ingestor.accounts.forget()  # ids it learned inside the rolled-back savepoint may not exist
        attempts = claimed.attempts + 1
        reason = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        values: dict[str, object] = {"attempts": attempts, "last_error": reason}
        parked = attempts >= self.max_attempts
        if parked:
            values |= {"state": "failed", "failed_at": self.clock()}
        conn.execute(update(ingest_batches).where(ingest_batches.c.id == claimed.batch_id).values(values))
        report.failures += 1
        self.totals.failures += 1
        if parked:
            report.parked.append((claimed.batch_id, reason))
            self.totals.parked += 1
            log.error("ingest batch %d from %s (%d readings) parked after %d attempts: %s", claimed.batch_id,
                      claimed.source, claimed.count, attempts, reason)  # fmt: skip
        else:
            log.warning("ingest batch %d from %s failed (attempt %d of %d): %s", claimed.batch_id, claimed.source,
                        attempts, self.max_attempts, reason)  # fmt: skip

    def drain(self, max_batches: int = DEFAULT_DRAIN_BATCHES, max_s: float = DEFAULT_DRAIN_S) -> DrainReport:
        """Ingest queued batches until the queue is empty, or ``max_batches`` or ``max_s`` is reached."""
        assert max_batches >= 1 and max_s > 0
        report = DrainReport()
        deadline = time.monotonic() + max_s
        for _ in range(max_batches):
            if not self.ingest_one(report):
                return report
            if time.monotonic() >= deadline:
                break
        report.more = True
        return report


# -- operating the queue ------------------------------------------------------------------------------------------


def counts(conn: Connection) -> dict[str, int]:
    """Batches by state (``queued``, ``failed``), zero included."""
    found: dict[str, int] = dict(
        conn.execute(select(ingest_batches.c.state, func.count()).group_by(ingest_batches.c.state)).all()
    )
    return {state: int(found.get(state, 0)) for state in ("queued", "failed")}


MAX_LIST_BATCHES = 10_000
"""Bound on the parked batches one listing (and one requeue) handles."""
REQUEUE_ACTION = "requeue_ingest_batch"


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The queue at a glance: batches waiting, batches parked, and the oldest waiting batch's enqueue time."""

    queued: int
    failed: int
    oldest_queued_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ParkedBatch:
    """A batch parked as failed: what it holds and why it was parked."""

    batch_id: int
    source: str
    count: int
    attempts: int
    reason: str
    enqueued_at: dt.datetime
    failed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Refused:
    """An operating error: ``field`` names the input at fault, ``message`` says why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def status(conn: Connection) -> QueueStatus:
    """Counts by state and the enqueue time of the oldest queued batch (the ``(state, id)`` index finds it)."""
    by_state = counts(conn)
    oldest = conn.execute(
        select(ingest_batches.c.enqueued_at)
        .where(ingest_batches.c.state == "queued")
        .order_by(ingest_batches.c.id)
        .limit(1)
    ).scalar()
    return QueueStatus(by_state["queued"], by_state["failed"], oldest)


def parked(
    conn: Connection, batch_ids: Sequence[int] | None = None, *, limit: int = MAX_LIST_BATCHES
) -> list[ParkedBatch]:
    """Parked batches (all, or those of ``batch_ids``), oldest first; at most ``limit``."""
    assert 1 <= limit <= MAX_LIST_BATCHES, limit
    c = ingest_batches.c
    query = select(c.id, c.source, c.count, c.attempts, c.last_error, c.enqueued_at, c.failed_at).where(
        c.state == "failed"
    )
    if batch_ids is not None:
        query = query.where(c.id.in_(list(batch_ids)))
    rows = conn.execute(query.order_by(c.id).limit(limit)).all()
    return [
        ParkedBatch(int(i), str(source), int(n), int(attempts), str(error), enqueued_at, failed_at)
        for i, source, n, attempts, error, enqueued_at, failed_at in rows
    ]


def requeue_parked(
    conn: Connection, batch_ids: Sequence[int] | None, *, actor: str, reason: str, now: dt.datetime
) -> list[ParkedBatch] | Refused:
    """Put parked batches (those of ``batch_ids``, or all when None) back in the queue, audited; the batches.

    All or nothing: an id that is unknown or not parked refuses the whole request (``Refused`` naming it) and
    changes nothing. Each batch requeued gets an audit record (``requeue_ingest_batch``, subject
    ``ingest_batch:<id>``) in the caller's transaction. At most ``MAX_LIST_BATCHES`` per call (with all: the
    oldest ones; call again for the rest)."""
    if not reason.strip():
        return Refused("reason", "say why the batches are requeued")
    if len(reason) > MAX_REASON_CHARS:
        return Refused("reason", f"{len(reason)} characters, more than {MAX_REASON_CHARS}")
    if batch_ids is not None:
        wanted = sorted(set(batch_ids))
        if not wanted:
            return Refused("id", "name at least one batch")
        if len(wanted) > MAX_LIST_BATCHES:
            return Refused("id", f"{len(wanted)} batches; at most {MAX_LIST_BATCHES} at a time")
        states = dict(
            conn.execute(
                select(ingest_batches.c.id, ingest_batches.c.state)
                .where(ingest_batches.c.id.in_(wanted))
                .with_for_update()
            ).all()
        )
        unknown = [i for i in wanted if i not in states]
        if unknown:
            return Refused("id", f"no ingest batch {', '.join(map(str, unknown))} (ingested, or never queued)")
        waiting = [i for i in wanted if states[i] != "failed"]
        if waiting:
            return Refused("id", f"batch {', '.join(map(str, waiting))} is queued, not parked: nothing to requeue")
    found = parked(conn, None if batch_ids is None else wanted)
    if not found:
        return []
    done = requeue_failed(conn, [b.batch_id for b in found])
    assert done == len(found), f"requeued {done} of {len(found)} parked batches"
    for batch in found:
        detail = {"source": batch.source, "count": batch.count, "attempts": batch.attempts,
                  "last_error": batch.reason[:MAX_ERROR_CHARS], "failed_at": batch.failed_at.isoformat()}  # fmt: skip
        record_audit(conn, actor, REQUEUE_ACTION, f"ingest_batch:{batch.batch_id}", reason, detail, now)
    return found


def requeue_failed(conn: Connection, batch_ids: Sequence[int] | None = None) -> int:
    """Put parked batches (all, or these) back in the queue with their attempts reset; how many."""
    query = update(ingest_batches).where(ingest_batches.c.state == "failed")
    if batch_ids is not None:
        query = query.where(ingest_batches.c.id.in_(list(batch_ids)))
    done = conn.execute(query.values(state="queued", attempts=0, failed_at=None))
    return int(done.rowcount or 0)
