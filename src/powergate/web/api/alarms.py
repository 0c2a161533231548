"""``/api/v1/alarms``: reconciliation alarms, meter events (tamper, reverse current, ...), offline meters; and
acknowledging an alarm or event (operators and finance; audited with the reason).

An acknowledgement is an audit record (action ``ack_alarm``, subject ``alarm:reconciliation:<id>`` or
``alarm:event:<id>``): who acknowledged, when and why are the record itself. Acknowledging twice answers the
first acknowledgement (200) and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import Connection

from powergate.protocols.mqtt import EVENT_TYPES
from powergate.services import queries
from powergate.store.audit import record_audit
from powergate.store.tables_meterside import ALARM_KINDS
from powergate.web.api._common import (
    ERRORS,
    Cursor,
    DbEngine,
    IdPath,
    Limit,
    Model,
    Now,
    PageOut,
    Reason,
    StaffReader,
    TextQuery,
    TimeQuery,
    found,
    one_of,
    paged,
    scope_of,
    window,
)
from powergate.web.api._models import mirror
from powergate.web.api.meters import MeterOut
from powergate.web.deps import Principal, Role, require

router = APIRouter(prefix="/alarms", tags=["alarms"], responses=ERRORS)
ACKNOWLEDGERS = require(Role.ADMIN, Role.OPERATOR, Role.FINANCE)
Acknowledger = Annotated[Principal, Depends(ACKNOWLEDGERS)]
ReconciliationKind = Literal["purchase_count_behind", "purchase_count_ahead", "remaining_amount", "ledger", "flow"]
assert set(ReconciliationKind.__args__) == set(ALARM_KINDS)  # type: ignore[attr-defined]


@mirror(queries.ReconciliationAlarmRow)
class ReconciliationAlarmOut(Model):
    pass


@mirror(queries.MeterEventRow)
class MeterEventOut(Model):
    pass


class AckIn(BaseModel):
    reason: Reason


@router.get("/reconciliation", response_model=PageOut[ReconciliationAlarmOut])
def list_reconciliation_alarms(
    who: StaffReader,
    engine: DbEngine,
    kind: ReconciliationKind | None = None,
    acknowledged: bool | None = None,
    since: Annotated[dt.date | None, Query(description="first day")] = None,
    until: Annotated[dt.date | None, Query(description="day after the last")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[ReconciliationAlarmOut]:
    """Mismatches found between meters, payments and the ledger (docs/reconciliation.md), newest first."""
    with engine.connect() as conn:
        return paged(
            lambda: queries.list_reconciliation_alarms(
                conn,
                scope_of(who),
                kind=kind,
                acknowledged=acknowledged,
                since=since,
                until=until,
                cursor=cursor,
                limit=limit,
            ),
            ReconciliationAlarmOut,
        )


@router.post("/reconciliation/{alarm_id}/ack", response_model=ReconciliationAlarmOut)
def ack_reconciliation_alarm(
    alarm_id: IdPath, body: AckIn, who: Acknowledger, engine: DbEngine, now: Now
) -> ReconciliationAlarmOut:
    scope = scope_of(who)
    with engine.begin() as conn:
        alarm = found(queries.get_reconciliation_alarm(conn, scope, alarm_id), "alarm", alarm_id)
        if alarm.acknowledged_at is None:
            _ack(
                conn, who, "reconciliation", alarm_id, body.reason, {"kind": alarm.kind, "subject": alarm.subject}, now
            )
            alarm = found(queries.get_reconciliation_alarm(conn, scope, alarm_id), "alarm", alarm_id)
    return ReconciliationAlarmOut.model_validate(alarm)


@router.get("/events", response_model=PageOut[MeterEventOut])
def list_meter_events(
    who: StaffReader,
    engine: DbEngine,
    meter_id: TextQuery = None,
    kind: Annotated[str | None, Query(max_length=32, description=f"one of {', '.join(sorted(EVENT_TYPES))}")] = None,
    acknowledged: bool | None = None,
    since: TimeQuery = None,
    until: TimeQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[MeterEventOut]:
    """Anti-theft and safety events reported by meters, newest first."""
    start, end = window(since, until)
    one_of(kind, sorted(EVENT_TYPES), "kind")
    with engine.connect() as conn:
        return paged(
            lambda: queries.list_meter_events(
                conn,
                scope_of(who),
                meter_id=meter_id,
                kind=kind,
                acknowledged=acknowledged,
                since=start,
                until=end,
                cursor=cursor,
                limit=limit,
            ),
            MeterEventOut,
        )


@router.post("/events/{event_id}/ack", response_model=MeterEventOut)
def ack_meter_event(event_id: IdPath, body: AckIn, who: Acknowledger, engine: DbEngine, now: Now) -> MeterEventOut:
    scope = scope_of(who)
    with engine.begin() as conn:
        event = found(queries.get_meter_event(conn, scope, event_id), "event", event_id)
        if event.acknowledged_at is None:
            _ack(conn, who, "event", event_id, body.reason, {"kind": event.kind, "meter_id": event.meter_id}, now)
            event = found(queries.get_meter_event(conn, scope, event_id), "event", event_id)
    return MeterEventOut.model_validate(event)


@router.get("/offline", response_model=PageOut[MeterOut])
def list_offline_meters(
    who: StaffReader, engine: DbEngine, site_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    cursor: Cursor = None, limit: Limit = 50,
) -> PageOut[MeterOut]:  # fmt: skip
    """Meters the head-end marked offline."""
    wanted = queries.MeterFilter(site_id=site_id, state="offline")
    with engine.connect() as conn:
        return paged(lambda: queries.list_meters(conn, scope_of(who), wanted, cursor=cursor, limit=limit), MeterOut)


def _ack(
    conn: Connection, who: Principal, kind: str, alarm_id: int, reason: str, detail: dict[str, str], now: dt.datetime
) -> None:
    record_audit(conn, who.actor, queries.ACK_ACTION, queries.alarm_subject(kind, alarm_id), reason, detail, now)
