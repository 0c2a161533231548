"""``/api/v1/meters``: list (with online status, relay state, last reading), get, attach to a room and account,
move to another account; ``/api/v1/meters/{id}/readings``: a meter's readings over a time range.

Staff read; operators attach and move (``powergate.services.accounts``, audited with the reason). A tenant lists
and reads only the meters of their account, and only the readings taken while the meter was theirs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import Connection, select

from powergate.services import accounts as accounts_service
from powergate.services import queries
from powergate.store.tables import meters, tariffs
from powergate.store.tables_structure import meter_assignments
from powergate.web.api._common import (
    ERRORS,
    MAX_ID,
    NO_NUL,
    Anyone,
    Cursor,
    DbEngine,
    IdQuery,
    Limit,
    MeterIdPath,
    Model,
    Now,
    Operator,
    PageOut,
    Reason,
    TextQuery,
    TimeQuery,
    found,
    paged,
    problem,
    scope_of,
    window,
)
from powergate.web.api._models import mirror

router = APIRouter(tags=["meters"], responses=ERRORS)


@mirror(queries.MeterRow)
class MeterOut(Model):
    pass


@mirror(queries.ReadingRow)
class ReadingOut(Model):
    pass


class AttachIn(BaseModel):
    meter_id: Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
    room_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    account_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    tariff_id: Annotated[str | None, Field(min_length=1, max_length=64, pattern=NO_NUL)] = None
    """Required when the meter is new to the system."""
    reason: Reason


class MoveIn(BaseModel):
    account_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    reason: Reason


@router.get("/meters", response_model=PageOut[MeterOut])
def list_meters(
    who: Anyone,
    engine: DbEngine,
    site_id: IdQuery = None,
    building_id: IdQuery = None,
    floor_id: IdQuery = None,
    room_id: IdQuery = None,
    account_id: IdQuery = None,
    tariff_id: TextQuery = None,
    state: Literal["online", "offline", "unknown", "tripped", "closed"] | None = None,
    search: TextQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[MeterOut]:
    wanted = queries.MeterFilter(site_id, building_id, floor_id, room_id, account_id, tariff_id, state, search)
    with engine.connect() as conn:
        return paged(lambda: queries.list_meters(conn, scope_of(who), wanted, cursor=cursor, limit=limit), MeterOut)


@router.get("/meters/{meter_id}", response_model=MeterOut)
def get_meter(meter_id: MeterIdPath, who: Anyone, engine: DbEngine) -> MeterOut:
    with engine.connect() as conn:
        return MeterOut.model_validate(found(queries.get_meter(conn, scope_of(who), meter_id), "meter", meter_id))


@router.get("/meters/{meter_id}/readings", response_model=PageOut[ReadingOut])
def list_readings(
    meter_id: MeterIdPath,
    who: Anyone,
    engine: DbEngine,
    since: TimeQuery = None,
    until: TimeQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[ReadingOut]:
    """The meter's readings in [since, until), oldest first."""
    start, end = window(since, until)
    scope = scope_of(who)
    with engine.connect() as conn:
        found(queries.get_meter(conn, scope, meter_id), "meter", meter_id)
        return paged(
            lambda: queries.list_readings(conn, scope, meter_id, since=start, until=end, cursor=cursor, limit=limit),
            ReadingOut,
        )


@router.post("/meters", response_model=MeterOut, status_code=201)
def attach_meter(body: AttachIn, who: Operator, engine: DbEngine, now: Now) -> MeterOut:
    """Install a meter in a room for an account (a new meter needs ``tariff_id``); audited."""
    scope = scope_of(who)
    with engine.begin() as conn:
        found(queries.get_room(conn, scope, body.room_id), "room", body.room_id)
        found(queries.get_account(conn, scope, body.account_id), "account", body.account_id)
        if queries.get_meter(conn, scope, body.meter_id) is None and _known_elsewhere(conn, body.meter_id):
            raise problem("meter_id", f"{body.meter_id!r} cannot be attached here", 409)
        if body.tariff_id is not None and not _tariff_visible(conn, scope, body.tariff_id):
            raise problem("tariff_id", f"no tariff {body.tariff_id!r} in this organisation")
        done = accounts_service.attach_meter(
            conn,
            body.meter_id,
            body.room_id,
            body.account_id,
            tariff_id=body.tariff_id,
            actor=who.actor,
            reason=body.reason,
            now=now,
        )
        if isinstance(done, accounts_service.Rejected):
            raise problem(done.field, done.message, 409 if "attached already" in done.message else 422)
        return MeterOut.model_validate(queries.get_meter(conn, scope, body.meter_id))


@router.post("/meters/{meter_id}/move", response_model=MeterOut)
def move_meter(meter_id: MeterIdPath, body: MoveIn, who: Operator, engine: DbEngine, now: Now) -> MeterOut:
    """Hand the meter to another account at the same site, at the last stored reading; audited."""
    scope = scope_of(who)
    with engine.begin() as conn:
        found(queries.get_meter(conn, scope, meter_id), "meter", meter_id)
        found(queries.get_account(conn, scope, body.account_id), "account", body.account_id)
        done = accounts_service.move_meter(
            conn, meter_id, body.account_id, actor=who.actor, reason=body.reason, now=now
        )
        if isinstance(done, accounts_service.Rejected):
            raise problem(done.field, done.message, 409)
        return MeterOut.model_validate(queries.get_meter(conn, scope, meter_id))


def _known_elsewhere(conn: Connection, meter_id: str) -> bool:
    """A meter that exists but is not this organisation's: never attach it (it would cross organisations)."""
    exists_at_all = conn.execute(select(meters.c.id).where(meters.c.id == meter_id)).first() is not None
    assigned_ever = (
        conn.execute(select(meter_assignments.c.id).where(meter_assignments.c.meter_id == meter_id).limit(1)).first()
        is not None
    )
    return exists_at_all and assigned_ever


def _tariff_visible(conn: Connection, scope: queries.Scope, tariff_id: str) -> bool:
    query = select(tariffs.c.id).where(tariffs.c.id == tariff_id, queries.visible_tariffs(scope))
    return conn.execute(query).first() is not None
