"""``/api/v1`` sites, buildings, floors and rooms: list and get (staff), create (admin, audited).

Creation goes through ``powergate.services.accounts`` (which checks names, time zones and limits); each create is
audited with the admin's name. Every lookup is scoped to the caller's organisation: another organisation's site,
building, floor or room is 404.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from powergate.domain.structure import CalendarKind, FieldError, PaymentChannel, RoomUse, parse_area
from powergate.services import accounts as accounts_service
from powergate.services import queries
from powergate.store.audit import record_audit
from powergate.web.api._common import (
    ERRORS,
    Admin,
    Cursor,
    DbEngine,
    IdPath,
    IdQuery,
    Limit,
    Model,
    Name,
    Now,
    PageOut,
    StaffReader,
    TextQuery,
    found,
    paged,
    problem,
    rejected,
    scope_of,
)
from powergate.web.api._models import mirror

router = APIRouter(tags=["sites"], responses=ERRORS)
ChannelName = Literal["wechat", "alipay", "cashier", "bank", "sandbox"]
MAX_MICROS = 10**15


@mirror(queries.SiteRow)
class SiteOut(Model):
    pass


class SiteIn(BaseModel):
    name: Name
    timezone: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")] = "Asia/Shanghai"
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] = "CNY"
    payment_channels: Annotated[list[ChannelName], Field(max_length=5)] = ["cashier"]
    min_purchase_micros: Annotated[int, Field(ge=0, le=MAX_MICROS)] = 0
    hoarding_limit_micros: Annotated[int | None, Field(ge=1, le=MAX_MICROS)] = None
    calendar: Literal["china", "weekends_only"] = "china"


@mirror(queries.PlaceRow)
class PlaceOut(Model):
    pass


class PlaceIn(BaseModel):
    name: Name


@mirror(queries.RoomRow)
class RoomOut(Model):
    pass


class RoomIn(BaseModel):
    number: Name
    area_m2: Annotated[str, Field(max_length=20, description="square metres, at most 2 decimals, e.g. 35.5")] = "0"
    use: Literal["apartment", "shop", "office", "dormitory", "public_area"] = "apartment"


@router.get("/sites", response_model=PageOut[SiteOut])
def list_sites(
    who: StaffReader, engine: DbEngine, search: TextQuery = None, cursor: Cursor = None, limit: Limit = 50
) -> PageOut[SiteOut]:
    with engine.connect() as conn:
        return paged(
            lambda: queries.list_sites(conn, scope_of(who), search=search, cursor=cursor, limit=limit), SiteOut
        )


@router.get("/sites/{site_id}", response_model=SiteOut)
def get_site(site_id: IdPath, who: StaffReader, engine: DbEngine) -> SiteOut:
    with engine.connect() as conn:
        return SiteOut.model_validate(found(queries.get_site(conn, scope_of(who), site_id), "site", site_id))


@router.post("/sites", response_model=SiteOut, status_code=201)
def create_site(body: SiteIn, who: Admin, engine: DbEngine, now: Now) -> SiteOut:
    with engine.begin() as conn:
        created = accounts_service.create_site(
            conn,
            who.organisation_id,
            body.name,
            timezone=body.timezone,
            currency=body.currency,
            channels=[PaymentChannel(c) for c in body.payment_channels],
            min_purchase_micros=body.min_purchase_micros,
            hoarding_limit_micros=body.hoarding_limit_micros,
            calendar=CalendarKind(body.calendar),
            actor=who.actor,
            now=now,
        )
        if isinstance(created, accounts_service.Rejected):
            raise rejected(created.field, created.message)
        return SiteOut.model_validate(queries.get_site(conn, scope_of(who), created))


@router.get("/sites/{site_id}/buildings", response_model=PageOut[PlaceOut])
def list_buildings(
    site_id: IdPath, who: StaffReader, engine: DbEngine, cursor: Cursor = None, limit: Limit = 50
) -> PageOut[PlaceOut]:
    with engine.connect() as conn:
        found(queries.get_site(conn, scope_of(who), site_id), "site", site_id)
        return paged(lambda: queries.list_buildings(conn, scope_of(who), site_id, cursor=cursor, limit=limit), PlaceOut)


@router.post("/sites/{site_id}/buildings", response_model=PlaceOut, status_code=201)
def create_building(site_id: IdPath, body: PlaceIn, who: Admin, engine: DbEngine, now: Now) -> PlaceOut:
    with engine.begin() as conn:
        found(queries.get_site(conn, scope_of(who), site_id), "site", site_id)
        created = accounts_service.create_building(conn, site_id, body.name)
        return _created(conn, created, "building", site_id, body.name, who.actor, now)


@router.get("/buildings/{building_id}/floors", response_model=PageOut[PlaceOut])
def list_floors(
    building_id: IdPath, who: StaffReader, engine: DbEngine, cursor: Cursor = None, limit: Limit = 50
) -> PageOut[PlaceOut]:
    with engine.connect() as conn:
        if not queries.building_in_scope(conn, scope_of(who), building_id):
            raise problem("building", f"{building_id} not found", 404)
        return paged(
            lambda: queries.list_floors(conn, scope_of(who), building_id, cursor=cursor, limit=limit), PlaceOut
        )


@router.post("/buildings/{building_id}/floors", response_model=PlaceOut, status_code=201)
def create_floor(building_id: IdPath, body: PlaceIn, who: Admin, engine: DbEngine, now: Now) -> PlaceOut:
    with engine.begin() as conn:
        if not queries.building_in_scope(conn, scope_of(who), building_id):
            raise problem("building", f"{building_id} not found", 404)
        created = accounts_service.create_floor(conn, building_id, body.name)
        return _created(conn, created, "floor", building_id, body.name, who.actor, now)


def _created(
    conn: Connection,
    created: int | accounts_service.Rejected,
    kind: str,
    parent: int,
    name: str,
    actor: str,
    now: dt.datetime,
) -> PlaceOut:
    if isinstance(created, accounts_service.Rejected):
        raise rejected(created.field, created.message)
    record_audit(
        conn, actor, f"create_{kind}", f"{kind}:{created}", f"new {kind}", {"parent": parent, "name": name}, now
    )
    return PlaceOut.model_validate(queries.PlaceRow(created, name, parent))


@router.get("/rooms", response_model=PageOut[RoomOut])
def list_rooms(
    who: StaffReader,
    engine: DbEngine,
    site_id: IdQuery = None,
    building_id: IdQuery = None,
    floor_id: IdQuery = None,
    search: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$", description="room number")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[RoomOut]:
    wanted = queries.RoomFilter(site_id, building_id, floor_id, search)
    with engine.connect() as conn:
        return paged(lambda: queries.list_rooms(conn, scope_of(who), wanted, cursor=cursor, limit=limit), RoomOut)


@router.get("/rooms/{room_id}", response_model=RoomOut)
def get_room(room_id: IdPath, who: StaffReader, engine: DbEngine) -> RoomOut:
    with engine.connect() as conn:
        return RoomOut.model_validate(found(queries.get_room(conn, scope_of(who), room_id), "room", room_id))


@router.post("/floors/{floor_id}/rooms", response_model=RoomOut, status_code=201)
def create_room(floor_id: IdPath, body: RoomIn, who: Admin, engine: DbEngine, now: Now) -> RoomOut:
    try:
        area = parse_area(body.area_m2, "area_m2")
    except FieldError as error:
        raise problem(error.field, error.message) from None
    with engine.begin() as conn:
        if not queries.floor_in_scope(conn, scope_of(who), floor_id):
            raise problem("floor", f"{floor_id} not found", 404)
        created = accounts_service.create_room(conn, floor_id, body.number, area, RoomUse(body.use))
        if isinstance(created, accounts_service.Rejected):
            raise rejected(created.field, created.message)
        detail = {"floor_id": floor_id, "number": body.number, "area_centi_m2": area, "use": body.use}
        record_audit(conn, who.actor, "create_room", f"room:{created}", "new room", detail, now)
        return RoomOut.model_validate(queries.get_room(conn, scope_of(who), created))
