"""The one organisation-scoped read layer, shared by the HTTP API and the console: for each list (sites, rooms,
accounts, meters, orders, refunds, tariffs, audit, alarms, ...) one filter dataclass, one row dataclass, one query
and one scoping rule. Where the API and the console show different fields, the row carries the union and each
caller picks what it shows (the API's response models exclude what they do not publish).

Every query takes a ``Scope``: the organisation whose data may be read and, for a tenant, the one account they
may see. Scoping is part of each query's WHERE clause, never a check after the fact, so a row of another
organisation is simply not found (the API answers 404 and ids do not leak). The finance reports
(``report_orders``, ``report_payments``, ``report_refunds``) also take ``PLATFORM``: every organisation at once,
for the operator's tools on the server. A site in a finance filter is always the site of the account whose
wallet the order credits (or the refund debits), never the free text recorded on the order, so the order list,
the income report and the shift report of one site count the same orders.

Pagination is by keyset, not offset: a page is the first ``limit`` rows after the cursor in the list's fixed
order (``id`` or ``(at, id)``), and ``next_cursor`` is the opaque encoding of the last row's key. A list that
changes between pages neither repeats nor skips the rows already seen. A cursor that was not produced by this
module is a ``BadCursor`` naming the field. The console's numbered pages (``number_orders``,
``number_accounts``: page N of M with a total) run the same query with an offset and a count, in the console's
order. Every list is bounded (``MAX_LIMIT``, ``MAX_PAGE_ROWS``).

Invariants:
- money is integer micros (balances) or fen (orders, refunds); energy integer Wh; times aware UTC;
- a meter belongs to the organisation of the account of its latest assignment (meters move only within a site);
  a tenant sees the meters whose latest assignment is their account, and only the readings taken while it was;
- an audit record belongs to an organisation when its actor is one of the organisation's users
  (``user:<name>@<org code>``, or ``.../key:<prefix>`` by API key) or its subject names one of the organisation's
  objects (``organisation:``, ``site:``, ``account:``, ``meter:``, ``order:``, ``tariff:``, its wallets, its
  alarms);
- a reconciliation alarm belongs to an organisation when its subject is one of its meters now or one of its
  wallets; a meter event when its meter is one of its meters now;
- a tariff is visible to an organisation when it owns it, or nobody owns it and its meters use it; it is
  ``shared`` (read-only in the console) when meters of another organisation use it now.
- an alarm is acknowledged when the audit log holds an ``ack_alarm`` record for it (``alarm_subject``): the
  acknowledgement is its own audit record, so it carries who and why and needs no table of its own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    cast,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
)

from powergate.store.tables import ledger_accounts, meter_rating_state, meters, readings, tariffs
from powergate.store.tables_api import tariff_owners
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_freeze import monthly_settlements
from powergate.store.tables_headend import meter_events, meter_status
from powergate.store.tables_meterside import reconciliation_alarms
from powergate.store.tables_payments import orders, payment_notifications, refunds
from powergate.store.tables_structure import (
    accounts,
    audit_log,
    buildings,
    floors,
    meter_assignments,
    organisations,
    rooms,
    site_payment_channels,
    sites,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_PAGE_ROWS = 200
"""Bound on a numbered page (the console's lists)."""
MAX_SEARCH_CHARS = 64
MAX_SUBJECT_CHARS = 200
MAX_CURSOR_CHARS = 512
ACK_ACTION = "ack_alarm"
T = TypeVar("T")


class BadCursor(ValueError):
    """A cursor that this list did not produce."""

    def __init__(self) -> None:
        super().__init__("cursor: not a cursor of this list; start again without one")
        self.field = "cursor"


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose data a query may read: an organisation, and for a tenant the one account they may see."""

    organisation_id: int
    account_id: int | None = None

    @property
    def tenant(self) -> bool:
        return self.account_id is not None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


# --- cursors -------------------------------------------------------------------------------------------------


def encode_cursor(values: Sequence[int | str | dt.datetime]) -> str:
    """The opaque cursor of a row key: URL-safe base64 of a JSON list (datetimes as ``{"t": iso}``)."""
    plain = [{"t": v.isoformat()} if isinstance(v, dt.datetime) else v for v in values]
    raw = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, kinds: Sequence[type]) -> list[Any]:
    """The row key in ``text``, checked against the expected kinds (``int``, ``str``, ``datetime``)."""
    if len(text) > MAX_CURSOR_CHARS:
        raise BadCursor()
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadCursor() from None
    if not isinstance(values, list) or len(values) != len(kinds):
        raise BadCursor()
    decoded: list[Any] = []
    for value, kind in zip(values, kinds, strict=True):
        if kind is dt.datetime:
            if not isinstance(value, dict) or not isinstance(value.get("t"), str):
                raise BadCursor()
            try:
                moment = dt.datetime.fromisoformat(value["t"])
            except ValueError:
                raise BadCursor() from None
            if moment.tzinfo is None:
                raise BadCursor()
            decoded.append(moment)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
                raise BadCursor()
            decoded.append(value)
        elif not isinstance(value, kind):
            raise BadCursor()
        else:
            decoded.append(value)
    return decoded


def _after(columns: Sequence[Any], values: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``columns`` (all ascending or all descending)."""
    head, value = columns[0], values[0]
    beyond: ColumnElement[bool] = head < value if descending else head > value
    if len(columns) == 1:
        return beyond
    return or_(beyond, and_(head == value, _after(columns[1:], values[1:], descending)))


def _page(
    conn: Connection,
    query: Select[Any],
    keys: Sequence[Any],
    kinds: Sequence[type],
    cursor: str | None,
    limit: int,
    make: Callable[[Any], T],
    key_of: Callable[[Any], Sequence[int | str | dt.datetime]],
    *,
    descending: bool = False,
) -> Page[T]:
    assert 1 <= limit <= MAX_LIMIT, limit
    if cursor:
        query = query.where(_after(keys, decode_cursor(cursor, kinds), descending))
    order = [k.desc() if descending else k.asc() for k in keys]
    rows = conn.execute(query.order_by(*order).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(key_of(rows[-1])) if more and rows else None
    return Page([make(row) for row in rows], next_cursor)


@dataclass(frozen=True, slots=True)
class NumberedPage(Generic[T]):
    """A numbered page (the console's pager): ``total`` rows match the filters; ``offset`` of the first one."""

    rows: list[T]
    total: int
    offset: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.rows) < self.total

    @property
    def has_previous(self) -> bool:
        return self.offset > 0


def _numbered(
    conn: Connection, query: Select[Any], order: Sequence[Any], offset: int, limit: int, make: Callable[[Any], T]
) -> NumberedPage[T]:
    """Rows ``offset`` .. ``offset + limit`` of ``query`` in ``order``, with the count of all its rows."""
    limit, offset = max(1, min(limit, MAX_PAGE_ROWS)), max(0, offset)
    total = int(conn.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one())
    rows = conn.execute(query.order_by(*order).limit(limit).offset(offset)).all()
    return NumberedPage([make(row) for row in rows], total, offset, limit)


def _like(text: str) -> str:
    """A LIKE pattern for a contains-search, with the pattern characters escaped."""
    clean = text.strip()[:MAX_SEARCH_CHARS].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{clean}%"


def _contains(column: Any, text: str) -> ColumnElement[bool]:
    return func.lower(column).like(_like(text).lower(), escape="\\")


# --- sites and places ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteRow:
    id: int
    name: str
    timezone: str
    currency: str
    calendar: str
    min_purchase_micros: int
    hoarding_limit_micros: int | None
    payment_channels: list[str]
    created_at: dt.datetime


def _channels_of(conn: Connection, site_ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {site_id: [] for site_id in site_ids}
    if site_ids:
        query = select(site_payment_channels).where(site_payment_channels.c.site_id.in_(site_ids))
        for row in conn.execute(query.order_by(site_payment_channels.c.channel)):
            found[int(row.site_id)].append(str(row.channel))
    return found


def list_sites(
    conn: Connection, scope: Scope, *, search: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[SiteRow]:
    query = select(sites).where(sites.c.organisation_id == scope.organisation_id)
    if search:
        query = query.where(_contains(sites.c.name, search))
    page = _page(conn, query, [sites.c.id], [int], cursor, limit, lambda r: r, lambda r: [int(r.id)])
    channels = _channels_of(conn, [int(r.id) for r in page.items])
    return Page([_site(r, channels[int(r.id)]) for r in page.items], page.next_cursor)


def site_ids(scope: Scope) -> Select[Any]:
    """The organisation's site ids (a subquery): the scope of what a site owns (charge items, rules, bills)."""
    return select(sites.c.id).where(sites.c.organisation_id == scope.organisation_id)


def get_site(conn: Connection, scope: Scope, site_id: int) -> SiteRow | None:
    row = conn.execute(
        select(sites).where(sites.c.id == site_id, sites.c.organisation_id == scope.organisation_id)
    ).first()
    return None if row is None else _site(row, _channels_of(conn, [site_id])[site_id])


def _site(row: Any, channels: list[str]) -> SiteRow:
    limit = None if row.hoarding_limit_micros is None else int(row.hoarding_limit_micros)
    return SiteRow(
        int(row.id), row.name, row.timezone, row.currency, row.calendar, int(row.min_purchase_micros), limit,
        channels, row.created_at,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PlaceRow:
    """A building or a floor: its id, name and parent."""

    id: int
    name: str
    parent_id: int


def list_buildings(
    conn: Connection, scope: Scope, site_id: int, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[PlaceRow]:
    query = (
        select(buildings.c.id, buildings.c.name, buildings.c.site_id.label("parent_id"))
        .join(sites, sites.c.id == buildings.c.site_id)
        .where(sites.c.organisation_id == scope.organisation_id, buildings.c.site_id == site_id)
    )
    return _page(conn, query, [buildings.c.id], [int], cursor, limit, _place, lambda r: [int(r.id)])


def list_floors(
    conn: Connection, scope: Scope, building_id: int, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[PlaceRow]:
    query = (
        select(floors.c.id, floors.c.name, floors.c.building_id.label("parent_id"))
        .join(buildings, buildings.c.id == floors.c.building_id)
        .join(sites, sites.c.id == buildings.c.site_id)
        .where(sites.c.organisation_id == scope.organisation_id, floors.c.building_id == building_id)
    )
    return _page(conn, query, [floors.c.id], [int], cursor, limit, _place, lambda r: [int(r.id)])


def _place(row: Any) -> PlaceRow:
    return PlaceRow(int(row.id), str(row.name), int(row.parent_id))


def building_in_scope(conn: Connection, scope: Scope, building_id: int) -> bool:
    query = (
        select(buildings.c.id)
        .join(sites, sites.c.id == buildings.c.site_id)
        .where(buildings.c.id == building_id, sites.c.organisation_id == scope.organisation_id)
    )
    return conn.execute(query).first() is not None


def floor_in_scope(conn: Connection, scope: Scope, floor_id: int) -> bool:
    query = (
        select(floors.c.id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .join(sites, sites.c.id == buildings.c.site_id)
        .where(floors.c.id == floor_id, sites.c.organisation_id == scope.organisation_id)
    )
    return conn.execute(query).first() is not None


@dataclass(frozen=True, slots=True)
class RoomRow:
    id: int
    number: str
    area_centi_m2: int
    use: str
    floor_id: int
    floor: str
    building_id: int
    building: str
    site_id: int
    site: str
    meter_ids: list[str]


@dataclass(frozen=True, slots=True)
class RoomFilter:
    site_id: int | None = None
    building_id: int | None = None
    floor_id: int | None = None
    search: str | None = None


def _rooms_query(scope: Scope) -> Select[Any]:
    return (
        select(
            rooms.c.id, rooms.c.number, rooms.c.area_centi_m2, rooms.c.use, rooms.c.floor_id,
            floors.c.name.label("floor"), floors.c.building_id, buildings.c.name.label("building"),
            buildings.c.site_id, sites.c.name.label("site"),
        )
        .join(floors, floors.c.id == rooms.c.floor_id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .join(sites, sites.c.id == buildings.c.site_id)
        .where(sites.c.organisation_id == scope.organisation_id)
    )  # fmt: skip


def list_rooms(
    conn: Connection, scope: Scope, wanted: RoomFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[RoomRow]:
    query = _rooms_query(scope)
    if wanted.site_id is not None:
        query = query.where(buildings.c.site_id == wanted.site_id)
    if wanted.building_id is not None:
        query = query.where(floors.c.building_id == wanted.building_id)
    if wanted.floor_id is not None:
        query = query.where(rooms.c.floor_id == wanted.floor_id)
    if wanted.search:
        query = query.where(_contains(rooms.c.number, wanted.search))
    page = _page(conn, query, [rooms.c.id], [int], cursor, limit, lambda r: r, lambda r: [int(r.id)])
    meters_of = _room_meters(conn, [int(r.id) for r in page.items])
    return Page([_room(r, meters_of.get(int(r.id), [])) for r in page.items], page.next_cursor)


def get_room(conn: Connection, scope: Scope, room_id: int) -> RoomRow | None:
    row = conn.execute(_rooms_query(scope).where(rooms.c.id == room_id)).first()
    return None if row is None else _room(row, _room_meters(conn, [room_id]).get(room_id, []))


def _room_meters(conn: Connection, room_ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if room_ids:
        ma = meter_assignments.c
        query = select(ma.room_id, ma.meter_id).where(ma.room_id.in_(room_ids), ma.valid_to.is_(None))
        for room_id, meter_id in conn.execute(query.order_by(ma.meter_id)):
            found.setdefault(int(room_id), []).append(str(meter_id))
    return found


def _room(row: Any, meter_ids: list[str]) -> RoomRow:
    return RoomRow(
        int(row.id), row.number, int(row.area_centi_m2), row.use, int(row.floor_id), row.floor,
        int(row.building_id), row.building, int(row.site_id), row.site, meter_ids,
    )  # fmt: skip


# --- accounts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    account_no: str
    name: str
    phone: str | None
    email: str | None
    state: str
    site_id: int
    site: str
    wallet: str
    wallet_account_id: int
    balance_micros: int
    overdraft_limit_micros: int
    created_at: dt.datetime
    opened_at: dt.datetime | None
    closed_at: dt.datetime | None
    meters: tuple[str, ...] = ()
    """The meters it holds now (open assignments); filled by ``with_placements``."""
    rooms: tuple[str, ...] = ()
    """``building/floor/room`` of each of ``meters``; filled by ``with_placements``."""


@dataclass(frozen=True, slots=True)
class AccountFilter:
    site_id: int | None = None
    state: str | None = None
    search: str | None = None
    """Account number, name or phone contains this."""
    below_micros: int | None = None
    """Only wallets whose balance is below this (e.g. the lowest warning level)."""
    search_placements: bool = False
    """``search`` also matches the meter ids and room numbers of the account's open assignments."""


def _accounts_query(scope: Scope) -> Select[Any]:
    query = (
        select(
            accounts, sites.c.name.label("site"), ledger_accounts.c.code.label("wallet"),
            ledger_accounts.c.balance_micros, ledger_accounts.c.overdraft_limit_micros,
        )
        .join(sites, sites.c.id == accounts.c.site_id)
        .join(ledger_accounts, ledger_accounts.c.id == accounts.c.wallet_account_id)
        .where(accounts.c.organisation_id == scope.organisation_id)
    )  # fmt: skip
    if scope.account_id is not None:
        query = query.where(accounts.c.id == scope.account_id)
    return query


def _accounts_wanted(scope: Scope, wanted: AccountFilter) -> Select[Any]:
    query = _accounts_query(scope)
    if wanted.site_id is not None:
        query = query.where(accounts.c.site_id == wanted.site_id)
    if wanted.state is not None:
        query = query.where(accounts.c.state == wanted.state)
    if wanted.below_micros is not None:
        query = query.where(ledger_accounts.c.balance_micros < wanted.below_micros)
    if wanted.search:
        matches = [
            _contains(accounts.c.account_no, wanted.search),
            _contains(accounts.c.name, wanted.search),
            _contains(func.coalesce(accounts.c.phone, ""), wanted.search),
        ]
        if wanted.search_placements:
            ma = meter_assignments.c
            placed = (
                select(ma.account_id)
                .join(rooms, rooms.c.id == ma.room_id)
                .where(
                    ma.valid_to.is_(None),
                    or_(_contains(ma.meter_id, wanted.search), _contains(rooms.c.number, wanted.search)),
                )
            )
            matches.append(accounts.c.id.in_(placed))
        query = query.where(or_(*matches))
    return query


def list_accounts(
    conn: Connection, scope: Scope, wanted: AccountFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[AccountRow]:
    """Accounts by id (a keyset page)."""
    query = _accounts_wanted(scope, wanted)
    return _page(conn, query, [accounts.c.id], [int], cursor, limit, _account, lambda r: [int(r.id)])


def number_accounts(
    conn: Connection, scope: Scope, wanted: AccountFilter, *, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> NumberedPage[AccountRow]:
    """Accounts by account number, as a numbered page (the console), each with its placements."""
    page = _numbered(conn, _accounts_wanted(scope, wanted), [accounts.c.account_no], offset, limit, _account)
    return NumberedPage(with_placements(conn, page.rows), page.total, page.offset, page.limit)


def with_placements(conn: Connection, found: Sequence[AccountRow]) -> list[AccountRow]:
    """The accounts with the meters they hold now and where (``building/floor/room``), read in one query."""
    if not found:
        return []
    ma = meter_assignments.c
    query = (
        select(ma.account_id, ma.meter_id, buildings.c.name, floors.c.name, rooms.c.number)
        .join(rooms, rooms.c.id == ma.room_id)
        .join(floors, floors.c.id == rooms.c.floor_id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .where(ma.account_id.in_([a.id for a in found]), ma.valid_to.is_(None))
        .order_by(ma.meter_id)
    )
    placed: dict[int, list[tuple[str, str]]] = {}
    for account_id, meter_id, building, floor, room in conn.execute(query):
        placed.setdefault(int(account_id), []).append((str(meter_id), f"{building}/{floor}/{room}"))
    return [
        replace(a, meters=tuple(m for m, _ in placed.get(a.id, [])), rooms=tuple(r for _, r in placed.get(a.id, [])))
        for a in found
    ]


def get_account(conn: Connection, scope: Scope, account_id: int) -> AccountRow | None:
    row = conn.execute(_accounts_query(scope).where(accounts.c.id == account_id)).first()
    return None if row is None else _account(row)


def _account(row: Any) -> AccountRow:
    return AccountRow(
        int(row.id), row.account_no, row.name, row.phone, row.email, row.state, int(row.site_id), row.site,
        row.wallet, int(row.wallet_account_id), int(row.balance_micros), int(row.overdraft_limit_micros),
        row.created_at, row.opened_at, row.closed_at,
    )  # fmt: skip


def account_meter_ids(conn: Connection, account_id: int) -> list[str]:
    """The meters attached to the account now (open assignments)."""
    ma = meter_assignments.c
    query = select(ma.meter_id).where(ma.account_id == account_id, ma.valid_to.is_(None)).order_by(ma.meter_id)
    return [str(m) for m in conn.execute(query).scalars()]


# --- meters --------------------------------------------------------------------------------------------------

METER_STATES = ("online", "offline", "unknown", "tripped", "closed")


@dataclass(frozen=True, slots=True)
class MeterRow:
    id: str
    tariff_id: str
    timezone: str
    account_id: int
    account_no: str
    attached: bool
    """False when the latest assignment has ended (the account closed or the meter was removed)."""
    room_id: int
    room: str
    floor_id: int
    building_id: int
    site_id: int
    online: bool | None
    last_seen_at: dt.datetime | None
    relay_open: bool | None
    remaining_micros: int | None
    last_reading_at: dt.datetime | None
    last_total_wh: int | None
    balance_micros: int


@dataclass(frozen=True, slots=True)
class MeterFilter:
    site_id: int | None = None
    building_id: int | None = None
    floor_id: int | None = None
    room_id: int | None = None
    account_id: int | None = None
    tariff_id: str | None = None
    state: str | None = None
    """``online``, ``offline``, ``unknown`` (never heard from), ``tripped`` (relay open), ``closed`` (relay closed)."""
    search: str | None = None
    """Meter id, room number or account number contains this."""


def _latest_assignment_id() -> Any:
    inner = meter_assignments.alias("latest")
    return select(func.max(inner.c.id)).where(inner.c.meter_id == meters.c.id).correlate(meters).scalar_subquery()


def _meters_query(scope: Scope) -> Select[Any]:
    ma = meter_assignments.c
    query = (
        select(
            meters.c.id, meters.c.tariff_id, meters.c.timezone, ma.account_id, accounts.c.account_no,
            ma.valid_to, ma.room_id, rooms.c.number.label("room"), rooms.c.floor_id, floors.c.building_id,
            buildings.c.site_id, meter_status.c.online, meter_status.c.last_seen_at, meter_status.c.relay_open,
            meter_status.c.remaining_micros, meter_rating_state.c.last_at, meter_rating_state.c.last_total_wh,
            ledger_accounts.c.balance_micros,
        )
        .select_from(meters)
        .join(meter_assignments, and_(ma.meter_id == meters.c.id, ma.id == _latest_assignment_id()))
        .join(accounts, accounts.c.id == ma.account_id)
        .join(rooms, rooms.c.id == ma.room_id)
        .join(floors, floors.c.id == rooms.c.floor_id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .join(ledger_accounts, ledger_accounts.c.id == meters.c.wallet_account_id)
        .outerjoin(meter_status, meter_status.c.meter_id == meters.c.id)
        .outerjoin(meter_rating_state, meter_rating_state.c.meter_id == meters.c.id)
        .where(accounts.c.organisation_id == scope.organisation_id)
    )  # fmt: skip
    if scope.account_id is not None:
        query = query.where(ma.account_id == scope.account_id)
    return query


def _meter_state(state: str) -> ColumnElement[bool]:
    status = meter_status.c
    return {
        "online": status.online.is_(true()),
        "offline": status.online.is_(false()),
        "unknown": status.meter_id.is_(None),
        "tripped": status.relay_open.is_(true()),
        "closed": status.relay_open.is_(false()),
    }[state]


def list_meters(
    conn: Connection, scope: Scope, wanted: MeterFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[MeterRow]:
    assert wanted.state is None or wanted.state in METER_STATES, wanted.state
    query = _meters_query(scope)
    conditions: list[ColumnElement[bool]] = []
    for column, value in (
        (buildings.c.site_id, wanted.site_id),
        (floors.c.building_id, wanted.building_id),
        (rooms.c.floor_id, wanted.floor_id),
        (meter_assignments.c.room_id, wanted.room_id),
        (meter_assignments.c.account_id, wanted.account_id),
        (meters.c.tariff_id, wanted.tariff_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if wanted.state is not None:
        conditions.append(_meter_state(wanted.state))
    if wanted.search:
        conditions.append(
            or_(
                _contains(meters.c.id, wanted.search),
                _contains(rooms.c.number, wanted.search),
                _contains(accounts.c.account_no, wanted.search),
            )
        )
    if conditions:
        query = query.where(*conditions)
    return _page(conn, query, [meters.c.id], [str], cursor, limit, _meter, lambda r: [str(r.id)])


def get_meter(conn: Connection, scope: Scope, meter_id: str) -> MeterRow | None:
    row = conn.execute(_meters_query(scope).where(meters.c.id == meter_id)).first()
    return None if row is None else _meter(row)


def _meter(row: Any) -> MeterRow:
    def optional_int(value: Any) -> int | None:
        return None if value is None else int(value)

    def optional_bool(value: Any) -> bool | None:
        return None if value is None else bool(value)

    return MeterRow(
        str(row.id), row.tariff_id, row.timezone, int(row.account_id), row.account_no, row.valid_to is None,
        int(row.room_id), row.room, int(row.floor_id), int(row.building_id), int(row.site_id),
        optional_bool(row.online), row.last_seen_at, optional_bool(row.relay_open),
        optional_int(row.remaining_micros), row.last_at, optional_int(row.last_total_wh), int(row.balance_micros),
    )  # fmt: skip


# --- readings ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadingRow:
    id: str
    at: dt.datetime
    total_wh: int
    sharp_wh: int | None
    peak_wh: int | None
    flat_wh: int | None
    valley_wh: int | None
    kind: str
    status: str
    reason: str | None
    amount_micros: int | None
    estimated: bool
    received_at: dt.datetime


def list_readings(
    conn: Connection,
    scope: Scope,
    meter_id: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[ReadingRow]:
    """The meter's readings in [since, until), oldest first; the caller has checked the meter is in scope.

    A tenant sees only the readings taken while the meter was assigned to their account.
    """
    r = readings.c
    query = select(readings).where(r.meter_id == meter_id)
    if since is not None:
        query = query.where(r.at >= since)
    if until is not None:
        query = query.where(r.at < until)
    if scope.account_id is not None:
        ma = meter_assignments.c
        query = query.where(
            exists().where(
                ma.meter_id == r.meter_id,
                ma.account_id == scope.account_id,
                ma.valid_from <= r.at,
                or_(ma.valid_to.is_(None), ma.valid_to > r.at),
            )
        )
    return _page(
        conn, query, [r.at, r.id], [dt.datetime, str], cursor, limit, _reading, lambda row: [row.at, str(row.id)]
    )


def _reading(row: Any) -> ReadingRow:
    def optional(value: Any) -> int | None:
        return None if value is None else int(value)

    return ReadingRow(
        str(row.id), row.at, int(row.total_wh), optional(row.sharp_wh), optional(row.peak_wh), optional(row.flat_wh),
        optional(row.valley_wh), row.kind, row.status, row.reason, optional(row.amount_micros), bool(row.estimated),
        row.received_at,
    )  # fmt: skip


# --- commands ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: str
    meter_id: str
    kind: str
    parameters: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    requested_by: str
    reason: str
    created_at: dt.datetime
    updated_at: dt.datetime
    valid_until: dt.datetime
    last_error: str | None
    result: str | None


def list_commands(
    conn: Connection,
    meter_id: str,
    *,
    state: str | None = None,
    kind: str | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[CommandRow]:
    """A meter's commands, newest first; the caller has checked the meter is in scope."""
    c = meter_commands.c
    query = select(meter_commands).where(c.meter_id == meter_id)
    if state is not None:
        query = query.where(c.state == state)
    if kind is not None:
        query = query.where(c.kind == kind)
    return _page(conn, query, [c.seq], [int], cursor, limit, _command, lambda r: [int(r.seq)], descending=True)


def get_command(conn: Connection, scope: Scope, command_id: str) -> CommandRow | None:
    row = conn.execute(select(meter_commands).where(meter_commands.c.id == command_id)).first()
    if row is None or get_meter(conn, scope, str(row.meter_id)) is None:
        return None
    return _command(row)


def _command(row: Any) -> CommandRow:
    return CommandRow(
        str(row.id), str(row.meter_id), row.kind, json.loads(row.parameters), row.state, int(row.attempts),
        int(row.max_attempts), row.requested_by, row.reason, row.created_at, row.updated_at, row.valid_until,
        row.last_error, row.result,
    )  # fmt: skip


# --- orders and refunds --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlatformScope:
    """Every organisation's orders at once: for operator tools run on the server (``powergate finance``), which
    reconcile the takings of the whole platform. A web caller always has an organisation's ``Scope``. Only the
    finance reports (``report_orders``, ``report_payments``, ``report_refunds``) accept it, so a query not
    written for it cannot be handed one (mypy says so)."""


PLATFORM = PlatformScope()
MAX_REPORT_ROWS = 200_000
"""Bound on a finance report taken as one list. The order list is cut there (``report_orders``: it is a list);
payments and refunds that would exceed it raise ``ReportTooLarge`` (they are summed: a cut sum would be wrong)."""
PAID_STATES = ("paid", "refunded", "partially_refunded")
"""Order states in which the money was received (a later refund is a refund of its own)."""
COUNTED_REFUNDS = ("pending", "processing", "succeeded")
"""Refund states in which the money left the wallet (a refund the provider refused was put back)."""


class ReportTooLarge(ValueError):
    """The report would read more than ``MAX_REPORT_ROWS`` rows."""


@dataclass(frozen=True, slots=True)
class OrderRow:
    id: int
    order_no: str
    account_id: int
    account_no: str
    wallet: str
    """The ledger code of the account's wallet the order credits."""
    site_id: int
    channel: str
    method: str
    amount_fen: int
    refunded_fen: int
    currency: str
    state: str
    description: str
    created_at: dt.datetime
    expires_at: dt.datetime
    paid_at: dt.datetime | None
    provider_txn_id: str | None
    receipt_no: str | None
    operator: str | None
    closed_reason: str | None


@dataclass(frozen=True, slots=True)
class OrderFilter:
    site_id: int | None = None
    account_id: int | None = None
    channel: str | None = None
    state: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    search: str | None = None
    """Order number, receipt number or account number contains this."""
    account_no: str | None = None
    """Exactly this account number."""


def _owned(scope: Scope | PlatformScope, wallet_column: Any) -> ColumnElement[bool]:
    """The account owning ``wallet_column``'s wallet, within the scope (join target for orders and refunds)."""
    condition: ColumnElement[bool] = accounts.c.wallet_account_id == wallet_column
    if isinstance(scope, PlatformScope):
        return condition
    condition = and_(condition, accounts.c.organisation_id == scope.organisation_id)
    if scope.account_id is not None:
        condition = and_(condition, accounts.c.id == scope.account_id)
    return condition


def _orders_query(scope: Scope | PlatformScope) -> Select[Any]:
    owner = (accounts.c.id.label("account_id"), accounts.c.account_no, accounts.c.site_id.label("site"))
    return (
        select(orders, *owner, ledger_accounts.c.code.label("wallet"))
        .join(accounts, _owned(scope, orders.c.wallet_account_id))
        .join(ledger_accounts, ledger_accounts.c.id == orders.c.wallet_account_id)
    )


def _orders_wanted(scope: Scope | PlatformScope, wanted: OrderFilter) -> Select[Any]:
    c = orders.c
    query = _orders_query(scope)
    for column, value in (
        (accounts.c.site_id, wanted.site_id),
        (accounts.c.id, wanted.account_id),
        (c.channel, wanted.channel),
        (c.state, wanted.state),
    ):
        if value is not None:
            query = query.where(column == value)
    if wanted.since is not None:
        query = query.where(c.created_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(c.created_at < wanted.until)
    if wanted.search:
        query = query.where(
            or_(
                _contains(c.order_no, wanted.search),
                _contains(func.coalesce(c.receipt_no, ""), wanted.search),
                _contains(accounts.c.account_no, wanted.search),
            )
        )
    if wanted.account_no:
        query = query.where(accounts.c.account_no == wanted.account_no.strip())
    return query


def list_orders(
    conn: Connection, scope: Scope, wanted: OrderFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[OrderRow]:
    """Orders, newest first (by id: a keyset page)."""
    c = orders.c
    query = _orders_wanted(scope, wanted)
    return _page(conn, query, [c.id], [int], cursor, limit, _order, lambda r: [int(r.id)], descending=True)


def number_orders(
    conn: Connection, scope: Scope, wanted: OrderFilter, *, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> NumberedPage[OrderRow]:
    """Orders, newest first by creation time, as a numbered page (the console)."""
    c = orders.c
    order = [c.created_at.desc(), c.id.desc()]
    return _numbered(conn, _orders_wanted(scope, wanted), order, offset, limit, _order)


def report_orders(
    conn: Connection, scope: Scope | PlatformScope, wanted: OrderFilter, *, limit: int = MAX_REPORT_ROWS
) -> list[OrderRow]:
    """Orders, newest first by creation time (the console's order), at most ``limit`` of them in one list: the
    order report printed or written to Excel (``powergate finance orders``)."""
    assert 1 <= limit <= MAX_REPORT_ROWS, limit
    c = orders.c
    query = _orders_wanted(scope, wanted).order_by(c.created_at.desc(), c.id.desc()).limit(limit)
    return [_order(row) for row in conn.execute(query)]


def get_order(conn: Connection, scope: Scope, order_no: str) -> OrderRow | None:
    row = conn.execute(_orders_query(scope).where(orders.c.order_no == order_no)).first()
    return None if row is None else _order(row)


def _order(row: Any) -> OrderRow:
    return OrderRow(
        int(row.id), row.order_no, int(row.account_id), row.account_no, row.wallet, int(row.site), row.channel,
        row.method, int(row.amount_fen), int(row.refunded_fen), row.currency, row.state, row.description,
        row.created_at, row.expires_at, row.paid_at, row.provider_txn_id, row.receipt_no, row.operator,
        row.closed_reason,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RefundRow:
    id: int
    refund_no: str
    order_no: str | None
    account_id: int
    account_no: str
    channel: str
    amount_fen: int
    destination: str
    state: str
    reason: str
    operator: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    failure: str | None


@dataclass(frozen=True, slots=True)
class RefundFilter:
    site_id: int | None = None
    account_id: int | None = None
    order_no: str | None = None
    state: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def _refunds_query(scope: Scope | PlatformScope) -> Select[Any]:
    owner = (accounts.c.id.label("account_id"), accounts.c.account_no)
    return select(refunds, *owner).join(accounts, _owned(scope, refunds.c.wallet_account_id))


def _refunds_wanted(scope: Scope | PlatformScope, wanted: RefundFilter) -> Select[Any]:
    c = refunds.c
    query = _refunds_query(scope)
    for column, value in (
        (accounts.c.site_id, wanted.site_id),
        (accounts.c.id, wanted.account_id),
        (c.order_no, wanted.order_no),
        (c.state, wanted.state),
    ):
        if value is not None:
            query = query.where(column == value)
    if wanted.since is not None:
        query = query.where(c.created_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(c.created_at < wanted.until)
    return query


def list_refunds(
    conn: Connection, scope: Scope, wanted: RefundFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[RefundRow]:
    """Refunds, newest first."""
    c = refunds.c
    query = _refunds_wanted(scope, wanted)
    return _page(conn, query, [c.id], [int], cursor, limit, _refund, lambda r: [int(r.id)], descending=True)


def _refund(row: Any) -> RefundRow:
    return RefundRow(
        int(row.id), row.refund_no, row.order_no, int(row.account_id), row.account_no, row.channel,
        int(row.amount_fen), row.destination, row.state, row.reason, row.operator, row.created_at, row.completed_at,
        row.failure,
    )  # fmt: skip


# --- takings: payments received and refunds made (the income report, the cashier's shift) -------------------


@dataclass(frozen=True, slots=True)
class TakingsFilter:
    """Payments received (``paid_at``) or refunds made (``created_at``) in [since, until); optionally one site
    (the id of the account's site, as in ``OrderFilter``), one channel, one operator (who took the payment or
    paid the refund)."""

    since: dt.datetime
    until: dt.datetime
    site_id: int | None = None
    channel: str | None = None
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class Taking:
    """One payment received or one refund made: what the finance reports add up."""

    number: str
    """The order number of a payment, the refund number of a refund."""
    channel: str
    method: str
    """How a payment was made (the order's method); where a refund went (its destination)."""
    amount_fen: int
    at: dt.datetime
    """When a payment was received (``paid_at``), when a refund was made (``created_at``)."""
    reference: str | None
    """The receipt or reference number of a payment; None for a refund."""
    operator: str | None


def report_payments(
    conn: Connection, scope: Scope | PlatformScope, wanted: TakingsFilter, *, limit: int = MAX_REPORT_ROWS
) -> list[Taking]:
    """Payments received in the window, oldest first: the orders of ``report_orders`` (same scope, same site)
    in a paid state, by ``paid_at``. More than ``limit`` is ``ReportTooLarge`` (a sum of a cut list is wrong)."""
    c = orders.c
    selected = _orders_wanted(scope, OrderFilter(site_id=wanted.site_id, channel=wanted.channel))
    query = selected.where(c.state.in_(PAID_STATES), c.paid_at >= wanted.since, c.paid_at < wanted.until)
    if wanted.operator is not None:
        query = query.where(c.operator == wanted.operator)
    columns = (c.order_no, c.channel, c.method, c.amount_fen, c.paid_at, c.receipt_no, c.operator)
    rows = _bounded(conn, query.with_only_columns(*columns).order_by(c.paid_at, c.id), limit)
    return [Taking(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6]) for r in rows]


def report_refunds(
    conn: Connection, scope: Scope | PlatformScope, wanted: TakingsFilter, *, limit: int = MAX_REPORT_ROWS
) -> list[Taking]:
    """Refunds made in the window that took money out (``COUNTED_REFUNDS``), oldest first, scoped and sited as
    the orders are. More than ``limit`` is ``ReportTooLarge``."""
    c = refunds.c
    query = _refunds_wanted(scope, RefundFilter(site_id=wanted.site_id, since=wanted.since, until=wanted.until))
    query = query.where(c.state.in_(COUNTED_REFUNDS))
    for column, value in ((c.channel, wanted.channel), (c.operator, wanted.operator)):
        if value is not None:
            query = query.where(column == value)
    columns = (c.refund_no, c.channel, c.destination, c.amount_fen, c.created_at, c.operator)
    rows = _bounded(conn, query.with_only_columns(*columns).order_by(c.created_at, c.id), limit)
    return [Taking(r[0], r[1], r[2], int(r[3]), r[4], None, r[5]) for r in rows]


def _bounded(conn: Connection, query: Select[Any], limit: int) -> list[Any]:
    assert 1 <= limit <= MAX_REPORT_ROWS, limit
    rows = conn.execute(query.limit(limit + 1)).all()
    if len(rows) > limit:
        raise ReportTooLarge(f"the report would read more than {limit} rows; narrow the dates")
    return list(rows)


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """A payment notification received for an order, with the verdict on it."""

    channel: str
    received_at: dt.datetime
    verdict: str
    reason: str
    notification_id: str | None


@dataclass(frozen=True, slots=True)
class OrderDetail:
    order: OrderRow
    refunds: list[RefundRow]
    """Oldest first."""
    notifications: list[NotificationRow]
    """Oldest first."""


def get_order_detail(conn: Connection, scope: Scope, order_no: str) -> OrderDetail | None:
    """The order with its refunds and payment notifications (at most ``MAX_PAGE_ROWS`` of each)."""
    order = get_order(conn, scope, order_no)
    if order is None:
        return None
    r = refunds.c
    refund_rows = conn.execute(
        _refunds_query(scope).where(r.order_no == order_no).order_by(r.created_at, r.id).limit(MAX_PAGE_ROWS)
    )
    n = payment_notifications.c
    notification_rows = conn.execute(
        select(payment_notifications).where(n.order_no == order_no).order_by(n.received_at, n.id).limit(MAX_PAGE_ROWS)
    )
    return OrderDetail(
        order,
        [_refund(x) for x in refund_rows],
        [NotificationRow(x.channel, x.received_at, x.verdict, x.reason, x.notification_id) for x in notification_rows],
    )


# --- tariffs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TariffRow:
    id: str
    name: str
    commodity: str
    owned: bool
    """True when the organisation owns it (created through the API); False when it is shared and in use."""
    meters: int
    """How many of the organisation's meters use it now."""
    created_at: dt.datetime
    shared: bool = False
    """Meters of another organisation use it now: it is read-only here (the console does not edit it)."""

    @property
    def editable(self) -> bool:
        return not self.shared


def _org_meter_ids(scope: Scope) -> Select[Any]:
    ma = meter_assignments.c
    return (
        select(ma.meter_id)
        .join(accounts, accounts.c.id == ma.account_id)
        .where(accounts.c.organisation_id == scope.organisation_id, ma.valid_to.is_(None))
    )


def visible_tariffs(scope: Scope) -> ColumnElement[bool]:
    """Tariffs the organisation may see and assign: its own, and shared ones its meters use."""
    owned = exists().where(
        tariff_owners.c.tariff_id == tariffs.c.id, tariff_owners.c.organisation_id == scope.organisation_id
    )
    unowned = ~exists().where(tariff_owners.c.tariff_id == tariffs.c.id)
    used = exists().where(meters.c.tariff_id == tariffs.c.id, meters.c.id.in_(_org_meter_ids(scope)))
    return or_(owned, and_(unowned, used))


def _tariffs_query(scope: Scope) -> Select[Any]:
    in_use = (
        select(func.count())
        .where(meters.c.tariff_id == tariffs.c.id, meters.c.id.in_(_org_meter_ids(scope)))
        .correlate(tariffs)
        .scalar_subquery()
    )
    owned = exists().where(
        tariff_owners.c.tariff_id == tariffs.c.id, tariff_owners.c.organisation_id == scope.organisation_id
    )
    ma = meter_assignments.c
    others = (
        select(ma.meter_id)
        .join(accounts, accounts.c.id == ma.account_id)
        .where(accounts.c.organisation_id != scope.organisation_id, ma.valid_to.is_(None))
    )
    shared = exists().where(meters.c.tariff_id == tariffs.c.id, meters.c.id.in_(others))
    return select(
        tariffs.c.id, tariffs.c.name, tariffs.c.commodity, tariffs.c.created_at, owned.label("owned"),
        in_use.label("meters"), shared.label("shared"),
    ).where(visible_tariffs(scope))  # fmt: skip


def list_tariffs(
    conn: Connection,
    scope: Scope,
    *,
    search: str | None = None,
    commodity: str | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[TariffRow]:
    query = _tariffs_query(scope)
    if search:
        query = query.where(or_(_contains(tariffs.c.id, search), _contains(tariffs.c.name, search)))
    if commodity is not None:
        query = query.where(tariffs.c.commodity == commodity)
    return _page(conn, query, [tariffs.c.id], [str], cursor, limit, _tariff, lambda r: [str(r.id)])


def get_tariff(conn: Connection, scope: Scope, tariff_id: str) -> tuple[TariffRow, str] | None:
    """The tariff and its stored document, if the organisation may see it."""
    row = conn.execute(_tariffs_query(scope).add_columns(tariffs.c.document).where(tariffs.c.id == tariff_id)).first()
    return None if row is None else (_tariff(row), str(row.document))


def tariffs_with_documents(
    conn: Connection, scope: Scope, *, limit: int = MAX_PAGE_ROWS
) -> list[tuple[TariffRow, str]]:
    """The first ``limit`` tariffs the organisation may see, by id, each with its stored document (the console)."""
    query = _tariffs_query(scope).add_columns(tariffs.c.document).order_by(tariffs.c.id)
    return [(_tariff(row), str(row.document)) for row in conn.execute(query.limit(max(1, min(limit, MAX_PAGE_ROWS))))]


def _tariff(row: Any) -> TariffRow:
    return TariffRow(
        str(row.id), row.name, row.commodity, bool(row.owned), int(row.meters), row.created_at, bool(row.shared)
    )


# --- audit ---------------------------------------------------------------------------------------------------


def _prefixed(prefix: str, column: Any) -> Any:
    return literal(prefix) + cast(column, String)


def organisation_subjects(scope: Scope) -> Select[Any]:
    """Every audit subject that names one of the organisation's objects (a UNION of small indexed selects)."""
    org = scope.organisation_id
    org_accounts = select(accounts.c.id).where(accounts.c.organisation_id == org)
    parts: list[Select[Any]] = [
        select(_prefixed("organisation:", organisations.c.code)).where(organisations.c.id == org),
        select(_prefixed("site:", sites.c.id)).where(sites.c.organisation_id == org),
        select(_prefixed("account:", accounts.c.id)).where(accounts.c.organisation_id == org),
        select(ledger_accounts.c.code)
        .join(accounts, accounts.c.wallet_account_id == ledger_accounts.c.id)
        .where(accounts.c.organisation_id == org),
        select(_prefixed("meter:", meter_assignments.c.meter_id)).where(
            meter_assignments.c.account_id.in_(org_accounts)
        ),
        select(_prefixed("order:", orders.c.order_no))
        .join(accounts, accounts.c.wallet_account_id == orders.c.wallet_account_id)
        .where(accounts.c.organisation_id == org),
        select(_prefixed("tariff:", tariff_owners.c.tariff_id)).where(tariff_owners.c.organisation_id == org),
        select(_prefixed("alarm:reconciliation:", reconciliation_alarms.c.id)).where(
            reconciliation_alarms.c.subject.in_(alarm_subjects(scope))
        ),
        select(_prefixed("alarm:event:", meter_events.c.id)).where(
            meter_events.c.meter_id.in_(select(meter_assignments.c.meter_id).where(
                meter_assignments.c.account_id.in_(org_accounts)
            ))
        ),
    ]  # fmt: skip
    return union_all(*parts)  # type: ignore[return-value]


def organisation_code(conn: Connection, organisation_id: int) -> str:
    value = conn.execute(select(organisations.c.code).where(organisations.c.id == organisation_id)).scalar()
    assert value is not None, f"no organisation {organisation_id}"
    return str(value)


def _organisation_audit(scope: Scope, code: str) -> ColumnElement[bool]:
    """Audit records of the organisation: written by one of its users (``user:<name>@<code>``, or
    ``user:<name>@<code>/key:<prefix>`` by API key), or about one of its objects (``organisation_subjects``)."""
    actor = audit_log.c.actor
    return or_(
        actor.endswith(f"@{code}", autoescape=True),
        actor.contains(f"@{code}/key:", autoescape=True),
        audit_log.c.subject.in_(organisation_subjects(scope)),
    )


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: dt.datetime
    actor: str
    action: str
    subject: str
    reason: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    subject: str | None = None
    """Exactly this subject."""
    actor: str | None = None
    """Exactly this actor."""
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    subject_contains: str | None = None
    """The subject contains this (case-insensitive)."""
    actor_contains: str | None = None
    """The actor contains this (case-insensitive)."""


def list_audit(
    conn: Connection, scope: Scope, wanted: AuditFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[AuditRow]:
    """Audit records of the organisation, newest first (a keyset page by id)."""
    a = audit_log.c
    query = select(audit_log).where(_organisation_audit(scope, organisation_code(conn, scope.organisation_id)))
    for column, value in ((a.subject, wanted.subject), (a.actor, wanted.actor), (a.action, wanted.action)):
        if value is not None:
            query = query.where(column == value)
    if wanted.subject_contains:
        query = query.where(a.subject.icontains(wanted.subject_contains[:MAX_SUBJECT_CHARS], autoescape=True))
    if wanted.actor_contains:
        query = query.where(a.actor.icontains(wanted.actor_contains[:MAX_SEARCH_CHARS], autoescape=True))
    if wanted.since is not None:
        query = query.where(a.at >= wanted.since)
    if wanted.until is not None:
        query = query.where(a.at < wanted.until)
    return _page(conn, query, [a.id], [int], cursor, limit, _audit, lambda r: [int(r.id)], descending=True)


def audit_cursor(before_id: int) -> str:
    """The cursor of the audit page that starts just before record ``before_id`` (the console's ``before``)."""
    return encode_cursor([min(before_id, 2**63 - 1)])


def audit_actions(conn: Connection) -> list[str]:
    """The distinct actions in the log (for the filter's choices), bounded."""
    query = select(audit_log.c.action).distinct().order_by(audit_log.c.action).limit(MAX_PAGE_ROWS)
    return [str(a) for (a,) in conn.execute(query)]


def _audit(row: Any) -> AuditRow:
    return AuditRow(int(row.id), row.at, row.actor, row.action, row.subject, row.reason, json.loads(row.detail))


# --- alarms --------------------------------------------------------------------------------------------------


def alarm_subject(kind: str, alarm_id: int) -> str:
    """The audit subject of an alarm: ``alarm:reconciliation:<id>`` or ``alarm:event:<id>``."""
    assert kind in ("reconciliation", "event"), kind
    return f"alarm:{kind}:{alarm_id}"


def alarm_subjects(scope: Scope) -> Select[Any]:
    """Reconciliation alarm subjects that belong to the organisation: its meters now (``meter:<id>``, by
    ``scope_meter_ids``) and its accounts' wallets."""
    meter_ids = scope_meter_ids(Scope(scope.organisation_id)).subquery()
    return union_all(
        select(_prefixed("meter:", meter_ids.c.meter_id)),
        select(ledger_accounts.c.code)
        .join(accounts, accounts.c.wallet_account_id == ledger_accounts.c.id)
        .where(accounts.c.organisation_id == scope.organisation_id),
    )  # type: ignore[return-value]


def _with_ack(query: Select[Any], prefix: str, id_column: Any) -> Select[Any]:
    """``query`` with the first acknowledgement of each row (``acked_at``, ``acked_by``), by two outer joins."""
    a = audit_log.c
    first = (
        select(a.subject, func.min(a.id).label("first_id"))
        .where(a.action == ACK_ACTION, a.subject.like(f"{prefix}%"))
        .group_by(a.subject)
        .subquery()
    )
    record = audit_log.alias("ack")
    return (
        query.add_columns(record.c.at.label("acked_at"), record.c.actor.label("acked_by"))
        .outerjoin(first, first.c.subject == _prefixed(prefix, id_column))
        .outerjoin(record, record.c.id == first.c.first_id)
    )


def _acknowledged(query: Select[Any], prefix: str, id_column: Any, acknowledged: bool | None) -> Select[Any]:
    """``query`` narrowed to the acknowledged rows (True), the open ones (False) or left as it is (None)."""
    if acknowledged is None:
        return query
    log = audit_log.c
    acked = exists().where(log.subject == _prefixed(prefix, id_column), log.action == ACK_ACTION)
    return query.where(acked if acknowledged else ~acked)


def _latest(conn: Connection, query: Select[Any], keys: Sequence[Any], limit: int, make: Callable[[Any], T]) -> list[T]:
    """The first ``limit`` rows of ``query``, newest first by ``keys`` (descending), bounded by ``MAX_PAGE_ROWS``."""
    query = query.order_by(*(k.desc() for k in keys)).limit(max(1, min(limit, MAX_PAGE_ROWS)))
    return [make(row) for row in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class ReconciliationAlarmRow:
    id: int
    day: dt.date
    subject: str
    kind: str
    expected: int | None
    actual: int | None
    message: str
    created_at: dt.datetime
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None


def _recon_query(scope: Scope) -> Select[Any]:
    r = reconciliation_alarms.c
    query = select(reconciliation_alarms).where(r.subject.in_(alarm_subjects(scope)))
    return _with_ack(query, "alarm:reconciliation:", r.id)


def _recon_wanted(
    scope: Scope,
    kind: str | None = None,
    acknowledged: bool | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> Select[Any]:
    r = reconciliation_alarms.c
    query = _recon_query(scope)
    if kind is not None:
        query = query.where(r.kind == kind)
    if since is not None:
        query = query.where(r.day >= since)
    if until is not None:
        query = query.where(r.day < until)
    return _acknowledged(query, "alarm:reconciliation:", r.id, acknowledged)


def list_reconciliation_alarms(
    conn: Connection,
    scope: Scope,
    *,
    kind: str | None = None,
    acknowledged: bool | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[ReconciliationAlarmRow]:
    """Reconciliation alarms, newest first (a keyset page by id)."""
    r = reconciliation_alarms.c
    query = _recon_wanted(scope, kind, acknowledged, since, until)
    return _page(conn, query, [r.id], [int], cursor, limit, _recon, lambda row: [int(row.id)], descending=True)


def latest_reconciliation_alarms(
    conn: Connection, scope: Scope, *, acknowledged: bool | None = None, limit: int = MAX_PAGE_ROWS
) -> list[ReconciliationAlarmRow]:
    """The latest ``limit`` reconciliation alarms, newest first by creation time (the console)."""
    r = reconciliation_alarms.c
    return _latest(conn, _recon_wanted(scope, acknowledged=acknowledged), [r.created_at, r.id], limit, _recon)


def get_reconciliation_alarm(conn: Connection, scope: Scope, alarm_id: int) -> ReconciliationAlarmRow | None:
    row = conn.execute(_recon_query(scope).where(reconciliation_alarms.c.id == alarm_id)).first()
    return None if row is None else _recon(row)


def _recon(row: Any) -> ReconciliationAlarmRow:
    def optional(value: Any) -> int | None:
        return None if value is None else int(value)

    return ReconciliationAlarmRow(
        int(row.id), row.day, row.subject, row.kind, optional(row.expected), optional(row.actual), row.message,
        row.created_at, _aware(row.acked_at), row.acked_by,
    )  # fmt: skip


def _aware(value: Any) -> dt.datetime | None:
    """A datetime from a scalar subquery (raw on SQLite: text or naive) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class MeterEventRow:
    id: int
    meter_id: str
    kind: str
    at: dt.datetime
    recorded_at: dt.datetime
    detail: str
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None


def _events_query(scope: Scope) -> Select[Any]:
    e = meter_events.c
    query = select(meter_events).where(e.meter_id.in_(scope_meter_ids(scope)))
    return _with_ack(query, "alarm:event:", e.id)


def scope_meter_ids(scope: Scope) -> Select[Any]:
    """Meters whose latest assignment is in the scope."""
    ma = meter_assignments.c
    latest = select(func.max(ma.id).label("id")).group_by(ma.meter_id).subquery()
    query = (
        select(ma.meter_id)
        .join(latest, latest.c.id == ma.id)
        .join(accounts, accounts.c.id == ma.account_id)
        .where(accounts.c.organisation_id == scope.organisation_id)
    )
    if scope.account_id is not None:
        query = query.where(ma.account_id == scope.account_id)
    return query


def _events_wanted(
    scope: Scope,
    meter_id: str | None = None,
    kind: str | None = None,
    acknowledged: bool | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Select[Any]:
    e = meter_events.c
    query = _events_query(scope)
    if meter_id is not None:
        query = query.where(e.meter_id == meter_id)
    if kind is not None:
        query = query.where(e.kind == kind)
    if since is not None:
        query = query.where(e.at >= since)
    if until is not None:
        query = query.where(e.at < until)
    return _acknowledged(query, "alarm:event:", e.id, acknowledged)


def list_meter_events(
    conn: Connection,
    scope: Scope,
    *,
    meter_id: str | None = None,
    kind: str | None = None,
    acknowledged: bool | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[MeterEventRow]:
    """Meter events, newest first (a keyset page by id)."""
    e = meter_events.c
    query = _events_wanted(scope, meter_id, kind, acknowledged, since, until)
    return _page(conn, query, [e.id], [int], cursor, limit, _event, lambda row: [int(row.id)], descending=True)


def latest_meter_events(
    conn: Connection, scope: Scope, *, acknowledged: bool | None = None, limit: int = MAX_PAGE_ROWS
) -> list[MeterEventRow]:
    """The latest ``limit`` meter events, newest first by when they happened (the console)."""
    e = meter_events.c
    return _latest(conn, _events_wanted(scope, acknowledged=acknowledged), [e.at, e.id], limit, _event)


def get_meter_event(conn: Connection, scope: Scope, event_id: int) -> MeterEventRow | None:
    row = conn.execute(_events_query(scope).where(meter_events.c.id == event_id)).first()
    return None if row is None else _event(row)


def _event(row: Any) -> MeterEventRow:
    return MeterEventRow(
        int(row.id), row.meter_id, row.kind, row.at, row.recorded_at, row.detail, _aware(row.acked_at), row.acked_by
    )


# --- settlements ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SettlementRow:
    account_id: int
    account_no: str
    month: dt.date
    opening_micros: int
    recharges_micros: int
    deductions_micros: int
    refunds_micros: int
    adjustments_micros: int
    closing_micros: int


def list_settlements(
    conn: Connection,
    scope: Scope,
    site_id: int,
    month: dt.date,
    *,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[SettlementRow]:
    """The stored monthly settlements of a site's accounts for ``month`` (its first day), by account."""
    s = monthly_settlements.c
    query = (
        select(monthly_settlements, accounts.c.id.label("account_id"), accounts.c.account_no)
        .join(accounts, accounts.c.wallet_account_id == s.wallet_account_id)
        .where(
            accounts.c.organisation_id == scope.organisation_id,
            accounts.c.site_id == site_id,
            s.month == month.replace(day=1),
        )
    )
    return _page(conn, query, [accounts.c.id], [int], cursor, limit, _settlement, lambda r: [int(r.account_id)])


def _settlement(row: Any) -> SettlementRow:
    return SettlementRow(
        int(row.account_id), row.account_no, row.month, int(row.opening_micros), int(row.recharges_micros),
        int(row.deductions_micros), int(row.refunds_micros), int(row.adjustments_micros), int(row.closing_micros),
    )  # fmt: skip


__all__ = [
    "ACK_ACTION",
    "COUNTED_REFUNDS",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_PAGE_ROWS",
    "MAX_REPORT_ROWS",
    "MAX_SEARCH_CHARS",
    "MAX_SUBJECT_CHARS",
    "METER_STATES",
    "PAID_STATES",
    "PLATFORM",
    "AccountFilter",
    "AccountRow",
    "AuditFilter",
    "AuditRow",
    "BadCursor",
    "CommandRow",
    "MeterEventRow",
    "MeterFilter",
    "MeterRow",
    "NotificationRow",
    "NumberedPage",
    "OrderDetail",
    "OrderFilter",
    "OrderRow",
    "Page",
    "PlaceRow",
    "PlatformScope",
    "ReadingRow",
    "ReconciliationAlarmRow",
    "RefundFilter",
    "RefundRow",
    "ReportTooLarge",
    "RoomFilter",
    "RoomRow",
    "Scope",
    "SettlementRow",
    "SiteRow",
    "Taking",
    "TakingsFilter",
    "TariffRow",
    "account_meter_ids",
    "alarm_subject",
    "alarm_subjects",
    "audit_actions",
    "audit_cursor",
    "building_in_scope",
    "decode_cursor",
    "encode_cursor",
    "floor_in_scope",
    "get_account",
    "get_command",
    "get_meter",
    "get_meter_event",
    "get_order",
    "get_order_detail",
    "get_reconciliation_alarm",
    "get_room",
    "get_site",
    "get_tariff",
    "latest_meter_events",
    "latest_reconciliation_alarms",
    "list_accounts",
    "list_audit",
    "list_buildings",
    "list_commands",
    "list_floors",
    "list_meter_events",
    "list_meters",
    "list_orders",
    "list_readings",
    "list_reconciliation_alarms",
    "list_refunds",
    "list_rooms",
    "list_settlements",
    "list_sites",
    "list_tariffs",
    "number_accounts",
    "number_orders",
    "organisation_code",
    "organisation_subjects",
    "report_orders",
    "report_payments",
    "report_refunds",
    "scope_meter_ids",
    "site_ids",
    "tariffs_with_documents",
    "visible_tariffs",
    "with_placements",
]
