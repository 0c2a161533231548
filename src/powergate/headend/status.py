"""Meter status (online / offline, last seen, last read, relay, remaining amount, purchase count) and events.

``StatusTracker`` keeps each meter's status in memory (one ``__slots__`` record per meter) from what the links
report: every answer is a sign of life, a snapshot also brings values, an OFFLINE failure means the meter's DTU,
gateway or modem is gone. A meter is online while it was heard from within ``offline_after_s`` (a heartbeat
timeout) and no OFFLINE failure came after that. Only records that changed are written, in batches.

The store side (``save_endpoints``, ``load_endpoints``, ``write_status``, ``record_events``) writes one
transaction per batch with one ``executemany``: status is an upsert by meter, endpoints likewise, and an event
is inserted once per (meter, kind, time): the same event record read again is skipped by the database, not by
a read-then-write race.

Invariants: times are UTC; amounts are micros; an event kind is one of ``protocols.mqtt.EVENT_TYPES``, anything
else comes back as a ``RejectedEvent`` naming the field; a status write never goes backwards in time for a
meter (``last_seen_at`` only grows in the tracker).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from powergate.headend.model import FailureKind, LinkError, MeterEndpoint, MeterSnapshot, Transport
from powergate.protocols.mqtt import EVENT_TYPES
from powergate.store.tables import meters
from powergate.store.tables_headend import MAX_EVENT_DETAIL, meter_endpoints, meter_events, meter_status

DEFAULT_OFFLINE_AFTER_S = 3 * 900.0
"""Three missed 15-minute reads (or heartbeats) and a meter is offline."""
MAX_WRITE_BATCH = 5_000
ID_CHUNK = 1_000
"""Meter ids per ``IN (...)`` when checking which meters of a batch exist."""
Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Status:
    __slots__ = (
        "dirty",
        "last_read_at",
        "last_seen_at",
        "online",
        "purchase_count",
        "relay_open",
        "remaining_micros",
    )

    def __init__(self) -> None:
        self.online = False
        self.last_seen_at: dt.datetime | None = None
        self.last_read_at: dt.datetime | None = None
        self.relay_open: bool | None = None
        self.remaining_micros: int | None = None
        self.purchase_count: int | None = None
        self.dirty = True


@dataclass(frozen=True, slots=True)
class StatusRow:
    meter_id: str
    online: bool
    last_seen_at: dt.datetime | None
    last_read_at: dt.datetime | None
    relay_open: bool | None
    remaining_micros: int | None
    purchase_count: int | None


class StatusTracker:
    """In-memory status of every meter; ``observe`` is the scheduler's and command queue's ``on_outcome``."""

    def __init__(self, *, offline_after_s: float = DEFAULT_OFFLINE_AFTER_S, clock: Clock = _utc_now) -> None:
        assert offline_after_s > 0
        self.offline_after = dt.timedelta(seconds=offline_after_s)
        self.clock = clock
        self._meters: dict[str, _Status] = {}

    def _status(self, meter_id: str) -> _Status:
        status = self._meters.get(meter_id)
        if status is None:
            status = self._meters[meter_id] = _Status()
        return status

    def observe(self, endpoint: MeterEndpoint, outcome: MeterSnapshot | LinkError | object) -> None:
        """What one exchange with a meter showed (a snapshot, a failure, or any other answer)."""
        status = self._status(endpoint.meter_id)
        if isinstance(outcome, LinkError):
            if outcome.kind is FailureKind.OFFLINE and status.online:
                status.online, status.dirty = False, True
            return
        now = outcome.at if isinstance(outcome, MeterSnapshot) else self.clock()
        if status.last_seen_at is None or now > status.last_seen_at:
            status.last_seen_at = now
            status.dirty = True
        if not status.online:
            status.online, status.dirty = True, True
        if isinstance(outcome, MeterSnapshot):
            self._take_values(status, outcome)

    @staticmethod
    def _take_values(status: _Status, snapshot: MeterSnapshot) -> None:
        if status.last_read_at is None or snapshot.at > status.last_read_at:
            status.last_read_at = snapshot.at
        for name in ("relay_open", "remaining_micros", "purchase_count"):
            value = getattr(snapshot, name)
            if value is not None and value != getattr(status, name):
                setattr(status, name, value)
        status.dirty = True

    def online(self, meter_id: str, now: dt.datetime | None = None) -> bool:
        status = self._meters.get(meter_id)
        if status is None or not status.online or status.last_seen_at is None:
            return False
        return (now or self.clock()) - status.last_seen_at <= self.offline_after

    def changes(self, now: dt.datetime | None = None) -> list[StatusRow]:
        """Rows for meters that changed since the last call (including those that just went silent)."""
        now = now or self.clock()
        rows: list[StatusRow] = []
        for meter_id, status in self._meters.items():
            silent = status.online and (status.last_seen_at is None or now - status.last_seen_at > self.offline_after)
            if silent:
                status.online, status.dirty = False, True
            if status.dirty:
                status.dirty = False
                rows.append(
                    StatusRow(
                        meter_id,
                        status.online,
                        status.last_seen_at,
                        status.last_read_at,
                        status.relay_open,
                        status.remaining_micros,
                        status.purchase_count,
                    )
                )
        return rows


# -- the store ----------------------------------------------------------------------------------------------


def _upsert(conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    updates = {name: statement.excluded[name] for name in rows[0] if name != key}
    for start in range(0, len(rows), MAX_WRITE_BATCH):
        conn.execute(
            statement.on_conflict_do_update(index_elements=[key], set_=updates), rows[start : start + MAX_WRITE_BATCH]
        )


def save_endpoints(conn: Connection, endpoints: Iterable[MeterEndpoint]) -> None:
    rows = [
        {
            "meter_id": e.meter_id,
            "transport": e.transport.value,
            "address": e.address,
            "link_id": e.link_id,
            "model": e.model,
        }
        for e in endpoints
    ]
    _upsert(conn, meter_endpoints, "meter_id", rows)


def load_endpoints(conn: Connection, transport: Transport | None = None) -> list[MeterEndpoint]:
    query = select(meter_endpoints).order_by(meter_endpoints.c.meter_id)
    if transport is not None:
        query = query.where(meter_endpoints.c.transport == transport.value)
    return [
        MeterEndpoint(row.meter_id, Transport(row.transport), row.address, row.link_id, row.model)
        for row in conn.execute(query)
    ]


def write_status(conn: Connection, rows: Sequence[StatusRow], now: dt.datetime) -> None:
    """Upsert ``rows`` (from ``StatusTracker.changes``) in the caller's transaction."""
    _upsert(
        conn,
        meter_status,
        "meter_id",
        [
            {
                "meter_id": row.meter_id,
                "online": row.online,
                "last_seen_at": row.last_seen_at,
                "last_read_at": row.last_read_at,
                "relay_open": row.relay_open,
                "remaining_micros": row.remaining_micros,
                "purchase_count": row.purchase_count,
                "updated_at": now,
            }
            for row in rows
        ],
    )


@dataclass(frozen=True, slots=True)
class MeterEvent:
    meter_id: str
    kind: str
    """One of ``protocols.mqtt.EVENT_TYPES``."""
    at: dt.datetime
    """When it happened (the meter's record, converted to UTC)."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    event: MeterEvent
    reason: str


def record_events(conn: Connection, events: Sequence[MeterEvent], now: dt.datetime) -> tuple[int, list[RejectedEvent]]:
    """Insert events not stored yet; returns (how many were new, the events refused and why).

    An event of a meter that has no row (another site's meter on a shared broker) is refused by name, before the
    insert: it would otherwise break the foreign key and with it the whole batch.
    """
    rejected: list[RejectedEvent] = []
    rows: list[dict[str, Any]] = []
    known = existing_meters(conn, {event.meter_id for event in events})
    for event in events:
        if event.meter_id not in known:
            rejected.append(RejectedEvent(event, f"meter_id: no meter {event.meter_id!r}"))
        elif event.kind not in EVENT_TYPES:
            rejected.append(RejectedEvent(event, f"kind: {event.kind!r} is not one of {', '.join(EVENT_TYPES)}"))
        elif event.at.tzinfo is None:
            rejected.append(RejectedEvent(event, f"at: {event.at.isoformat()} has no time zone"))
        else:
            rows.append(
                {
                    "meter_id": event.meter_id,
                    "kind": event.kind,
                    "at": event.at,
                    "recorded_at": now,
                    "detail": event.detail[:MAX_EVENT_DETAIL],
                }
            )
    if not rows:
        return 0, rejected
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(meter_events)
        .on_conflict_do_nothing(index_elements=["meter_id", "kind", "at"])
        .returning(meter_events.c.id)  # only the rows actually inserted come back: the count of new events
    )
    inserted = 0
    for start in range(0, len(rows), MAX_WRITE_BATCH):
        inserted += len(conn.execute(statement, rows[start : start + MAX_WRITE_BATCH]).all())
    return inserted, rejected


def existing_meters(conn: Connection, meter_ids: Iterable[str]) -> set[str]:
    """Those of ``meter_ids`` that have a row in ``meters``."""
    ids = sorted(set(meter_ids))
    found: set[str] = set()
    for start in range(0, len(ids), ID_CHUNK):
        query = select(meters.c.id).where(meters.c.id.in_(ids[start : start + ID_CHUNK]))
        found.update(str(meter_id) for meter_id in conn.execute(query).scalars())
    return found
