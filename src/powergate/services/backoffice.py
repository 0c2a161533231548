"""The console's alarm view and its one write: acknowledging an alarm. Lists are read through
``powergate.services.queries`` (the one organisation-scoped read layer, shared with the HTTP API); this module
only joins its reconciliation alarms and meter events with the meters offline now into one ``AlarmLine`` shape.

Scoping is the read layer's: an organisation's meters are those whose latest assignment is one of its accounts
(``queries.scope_meter_ids``), its reconciliation alarms those on such a meter or one of its wallets
(``queries.alarm_subjects``); an alarm of another organisation is simply not found (the console answers 404).

As in the HTTP API, an acknowledgement IS its audit record (action ``ack_alarm``, subject
``alarm:<source>:<id>``: who, when and why), so the console and the API see each other's acknowledgements and no
table is needed. The alarm's row is locked while acknowledging, so one alarm is acknowledged once; a second
attempt is refused with the name of the first. Every list is bounded (``MAX_PAGE``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from powergate.services import queries
from powergate.services.accounts import Rejected
from powergate.services.queries import ACK_ACTION, Scope, scope_meter_ids
from powergate.store.audit import MAX_REASON_CHARS, record_audit
from powergate.store.tables import meters
from powergate.store.tables_headend import meter_events, meter_status
from powergate.store.tables_meterside import reconciliation_alarms
from powergate.store.tables_structure import audit_log

MAX_PAGE = 200
MAX_ALARM_KEY_CHARS = 160


def _page_bounds(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(limit, MAX_PAGE)), max(0, offset)


# --- alarms ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmLine:
    key: str
    """``<source>:<id>``: what an acknowledgement names."""
    source: str
    subject: str
    kind: str
    at: dt.datetime | None
    message: str
    acknowledged_by: str | None = None
    acknowledged_at: dt.datetime | None = None


def reconciliation_alarm_lines(
    conn: Connection, organisation_id: int, *, include_acknowledged: bool = False, limit: int = MAX_PAGE
) -> list[AlarmLine]:
    """Reconciliation alarms on the organisation's meters and wallets, newest first."""
    found = queries.latest_reconciliation_alarms(
        conn, Scope(organisation_id), acknowledged=None if include_acknowledged else False, limit=limit
    )
    return [
        AlarmLine(
            f"reconciliation:{r.id}", "reconciliation", r.subject, r.kind, r.created_at, r.message,
            r.acknowledged_by, r.acknowledged_at,
        )
        for r in found
    ]  # fmt: skip


def event_alarm_lines(
    conn: Connection, organisation_id: int, *, include_acknowledged: bool = False, limit: int = MAX_PAGE
) -> list[AlarmLine]:
    """Meter events (cover open, reverse current, ...) of the organisation's meters, newest first."""
    found = queries.latest_meter_events(
        conn, Scope(organisation_id), acknowledged=None if include_acknowledged else False, limit=limit
    )
    return [
        AlarmLine(
            f"event:{r.id}", "event", f"meter:{r.meter_id}", r.kind, r.at, r.detail or "", r.acknowledged_by,
            r.acknowledged_at,
        )
        for r in found
    ]  # fmt: skip


def offline_key(meter_id: str, last_seen_at: dt.datetime | None) -> str:
    seen = int(last_seen_at.timestamp()) if last_seen_at is not None else 0
    return f"offline:{meter_id}:{seen}"


def offline_alarm_lines(
    conn: Connection, organisation_id: int, *, include_acknowledged: bool = False, limit: int = MAX_PAGE
) -> list[AlarmLine]:
    """The organisation's meters offline now, the longest silent first; one alarm per offline spell."""
    s = meter_status.c
    query = (
        select(s.meter_id, s.last_seen_at)
        .where(s.online.is_(False), s.meter_id.in_(scope_meter_ids(Scope(organisation_id))))
        .order_by(s.last_seen_at, s.meter_id)
        .limit(MAX_PAGE * 5)
    )
    lines = [
        AlarmLine(
            offline_key(str(r.meter_id), r.last_seen_at),
            "offline",
            f"meter:{r.meter_id}",
            "offline",
            r.last_seen_at,
            "",
        )
        for r in conn.execute(query)
    ]
    lines = _with_acknowledgements(conn, lines)
    if not include_acknowledged:
        lines = [line for line in lines if line.acknowledged_by is None]
    return lines[: _page_bounds(limit, 0)[0]]


def _with_acknowledgements(conn: Connection, lines: list[AlarmLine]) -> list[AlarmLine]:
    """Each line with its first acknowledgement (who, when), read in one query."""
    if not lines:
        return lines
    log = audit_log.c
    subjects = [f"alarm:{line.key}" for line in lines]
    first = (
        select(log.subject, func.min(log.id).label("first_id"))
        .where(log.action == ACK_ACTION, log.subject.in_(subjects))
        .group_by(log.subject)
        .subquery()
    )
    rows = conn.execute(select(log.subject, log.actor, log.at).join(first, first.c.first_id == log.id))
    acks = {str(r.subject).removeprefix("alarm:"): (str(r.actor), r.at) for r in rows}
    return [
        AlarmLine(x.key, x.source, x.subject, x.kind, x.at, x.message, *acks.get(x.key, (None, None))) for x in lines
    ]


def _lock_alarm(conn: Connection, organisation_id: int, key: str) -> bool:
    """Whether ``key`` names an alarm of the organisation; its row is locked (FOR UPDATE) so that concurrent
    acknowledgements of one alarm queue up and the second sees the first (SQLite serialises writers anyway)."""
    source, _, rest = key.partition(":")
    scope = Scope(organisation_id)
    if source == "reconciliation" and rest.isdigit():
        ra = reconciliation_alarms.c
        query = select(ra.id).where(ra.id == int(rest), ra.subject.in_(queries.alarm_subjects(scope)))
        return conn.execute(query.with_for_update()).first() is not None
    if source == "event" and rest.isdigit():
        e = meter_events.c
        query = select(e.id).where(e.id == int(rest), e.meter_id.in_(scope_meter_ids(scope)))
        return conn.execute(query.with_for_update()).first() is not None
    if source == "offline":
        meter_id, _, _seen = rest.rpartition(":")
        s = meter_status.c
        query = select(s.last_seen_at).where(
            s.meter_id == meter_id, s.online.is_(False), s.meter_id.in_(scope_meter_ids(scope))
        )
        row = conn.execute(query.with_for_update()).first()
        return row is not None and offline_key(meter_id, row.last_seen_at) == key
    return False


@dataclass(frozen=True, slots=True)
class Acknowledged:
    key: str
    actor: str
    at: dt.datetime


def acknowledge(
    conn: Connection, organisation_id: int, key: str, *, actor: str, reason: str, now: dt.datetime
) -> Acknowledged | Rejected:
    """Acknowledge one alarm of the organisation, audited; refused if unknown here or acknowledged already."""
    reason = reason.strip()
    if not reason:
        return Rejected("reason", "say why (what was checked or done)")
    if len(reason) > MAX_REASON_CHARS:
        return Rejected("reason", f"at most {MAX_REASON_CHARS} characters")
    if not key or len(key) > MAX_ALARM_KEY_CHARS or not _lock_alarm(conn, organisation_id, key):
        return Rejected("alarm", f"no alarm {key[:MAX_ALARM_KEY_CHARS]!r}")
    log = audit_log.c
    first = conn.execute(
        select(log.actor, log.at)
        .where(log.action == ACK_ACTION, log.subject == f"alarm:{key}")
        .order_by(log.id)
        .limit(1)
    ).first()
    if first is not None:
        return Rejected("alarm", f"{key} was acknowledged already by {first.actor} at {first.at:%Y-%m-%d %H:%M} UTC")
    record_audit(conn, actor, ACK_ACTION, f"alarm:{key}", reason, {"alarm": key}, now)
    return Acknowledged(key, actor, now)


# --- tariffs -----------------------------------------------------------------------------------------------


def tariff_timezones(conn: Connection, tariff_id: str) -> list[str]:
    """The time zones of the meters on the tariff (its versions start at site-local wall times)."""
    query = select(meters.c.timezone).where(meters.c.tariff_id == tariff_id).distinct().order_by(meters.c.timezone)
    return [str(z) for (z,) in conn.execute(query)]


__all__ = [
    "Acknowledged",
    "AlarmLine",
    "acknowledge",
    "event_alarm_lines",
    "offline_alarm_lines",
    "reconciliation_alarm_lines",
]
