"""Read models of the operations console: the dashboard, the room monitoring grid and the room detail.

Everything here is read-only and scoped to one organisation: every query joins up to ``sites`` and filters by
``sites.organisation_id``, so another organisation's rooms are simply not found (the console answers 404).

The grid is set-based (no query per room): ONE query returns a row per (room, open meter assignment) with the
account, wallet balance, policy, reported status, last register and the register frozen at the start of the
day; rows are folded into room tiles in Python. That keeps a 10,000-room site well inside the console's budget
(see ``bench/bench_console.py``).

A tile's state is the first that applies, in this order (what an operator on call must see first):
``no_account`` (no open account on the room), ``offline`` (a meter not known to be online), ``tripped`` (a relay
reported open or, when the meter has not said, the platform's decision to cut supply), ``protect``
(power-protect: never tripped), ``low`` (balance below the wallet's lowest warning level), ``normal``. A room
with several meters shows its worst meter.

Today's energy of a meter is its last register minus the register frozen at the start of the site-local day
(``daily_freezes`` of yesterday); without that freeze the grid shows none, and the room detail falls back to
the last reading at or before midnight. Energy is integer Wh and money integer micros throughout; rounding
happens only when a page formats them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, func, select

from powergate.domain.balance_policy import DEFAULT_WARNING_LEVELS_MICROS
from powergate.domain.forecast import Forecast
from powergate.headend import commands as queue
from powergate.headend.commands import QueuedCommand
from powergate.services import forecast as forecasts
from powergate.services import prepaid
from powergate.services import samples as sample_store
from powergate.store.tables import ledger_accounts, meter_rating_state, meters, readings, tariffs
from powergate.store.tables_calendar import tariff_warning_levels
from powergate.store.tables_freeze import daily_freezes
from powergate.store.tables_headend import meter_events, meter_status
from powergate.store.tables_payments import orders
from powergate.store.tables_prepaid import wallet_policies, wallet_states
from powergate.store.tables_structure import accounts, buildings, floors, meter_assignments, rooms, sites

MAX_GRID_ROOMS = 20_000
"""A grid never renders more tiles than this; the page asks for a narrower filter."""
MAX_SITES = 1_000
MAX_SEARCH_CHARS = 64
MAX_EVENTS = 50
MAX_COMMANDS = 50
CURVE_HOURS = 24
BANDS = ("sharp", "peak", "flat", "valley")


class TileState(StrEnum):
    NO_ACCOUNT = "no_account"
    OFFLINE = "offline"
    TRIPPED = "tripped"
    PROTECT = "protect"
    LOW = "low"
    NORMAL = "normal"


STATE_ORDER = tuple(TileState)
"""Worst first: a room shows the first state any of its meters is in."""
_RANK = {state: rank for rank, state in enumerate(STATE_ORDER)}


# -- shared helpers ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_midnight(now: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The start of the site-local day containing ``now``, in UTC."""
    local = now.astimezone(tz)
    return dt.datetime.combine(local.date(), dt.time(), tzinfo=tz).astimezone(dt.UTC)


@lru_cache(maxsize=256)
def lowest_level_micros(own: str | None, plan: str | None) -> int:
    """The lowest warning level of a wallet: its own levels (JSON text), else its tariff plan's, else the
    defaults (the resolution of ``prepaid.resolve_levels``)."""
    stored = own if own is not None else plan
    levels = DEFAULT_WARNING_LEVELS_MICROS if stored is None else tuple(int(v) for v in json.loads(stored))
    return min(levels, default=0)


@lru_cache(maxsize=65_536)
def _natural(text: str) -> tuple[Any, ...]:
    """Sort key: "2" before "10", "B2" before "B10"."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text.casefold()))


@dataclass(frozen=True, slots=True)
class SiteRef:
    id: int
    name: str
    timezone: str
    currency: str


def org_sites(conn: Connection, organisation_id: int) -> list[SiteRef]:
    c = sites.c
    query = (
        select(c.id, c.name, c.timezone, c.currency)
        .where(c.organisation_id == organisation_id)
        .order_by(c.name)
        .limit(MAX_SITES)
    )
    return [SiteRef(int(r.id), str(r.name), str(r.timezone), str(r.currency)) for r in conn.execute(query)]


# -- the grid -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GridFilter:
    site_id: int | None = None
    building_id: int | None = None
    floor_id: int | None = None
    state: TileState | None = None
    search: str = ""


@dataclass(slots=True)
class Tile:
    room_id: int
    number: str
    building_id: int
    building: str
    floor_id: int
    floor: str
    state: TileState = TileState.NO_ACCOUNT
    account_no: str | None = None
    account_name: str | None = None
    balance_micros: int | None = None
    today_wh: int | None = None
    meter_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FloorRow:
    building: str
    floor: str
    floor_id: int
    tiles: list[Tile]


@dataclass(slots=True)
class MeterCounts:
    """Meter-level figures of a selection (a meter counts once whatever its room's state)."""

    meters: int = 0
    online: int = 0
    offline: int = 0
    tripped: int = 0
    low: int = 0
    today_wh: int = 0


@dataclass(slots=True)
class Grid:
    site: SiteRef
    rooms: int
    """Rooms in the site / building / floor selection, before the state and search filters."""
    counts: dict[TileState, int]
    """Rooms per state in that selection."""
    meter_counts: MeterCounts
    floors: list[FloorRow]
    shown: int
    truncated: bool
    buildings: list[tuple[int, str]]
    floor_choices: list[tuple[int, str]]


def _grid_query(organisation_id: int, yesterday: dt.date) -> Any:
    r, f, b, s = rooms.c, floors.c, buildings.c, sites.c
    ma, a, la = meter_assignments.c, accounts.c, ledger_accounts.c
    return (
        select(
            r.id,
            r.number,
            f.id.label("floor_id"),
            f.name.label("floor"),
            b.id.label("building_id"),
            b.name.label("building"),
            s.id.label("site_id"),
            ma.meter_id,
            a.account_no,
            a.name.label("account_name"),
            a.state.label("account_state"),
            la.balance_micros,
            meter_status.c.online,
            meter_status.c.relay_open,
            wallet_policies.c.power_protect,
            wallet_policies.c.warning_levels,
            tariff_warning_levels.c.levels.label("plan_levels"),
            wallet_states.c.supply_on,
            meter_rating_state.c.last_total_wh,
            daily_freezes.c.total_wh.label("start_wh"),
        )
        .select_from(rooms)
        .join(floors, f.id == r.floor_id)
        .join(buildings, b.id == f.building_id)
        .join(sites, s.id == b.site_id)
        .outerjoin(meter_assignments, and_(ma.room_id == r.id, ma.valid_to.is_(None)))
        .outerjoin(accounts, a.id == ma.account_id)
        .outerjoin(ledger_accounts, la.id == a.wallet_account_id)
        .outerjoin(meter_status, meter_status.c.meter_id == ma.meter_id)
        .outerjoin(meters, meters.c.id == ma.meter_id)
        .outerjoin(tariff_warning_levels, tariff_warning_levels.c.tariff_id == meters.c.tariff_id)
        .outerjoin(wallet_policies, wallet_policies.c.wallet_account_id == a.wallet_account_id)
        .outerjoin(wallet_states, wallet_states.c.wallet_account_id == a.wallet_account_id)
        .outerjoin(meter_rating_state, meter_rating_state.c.meter_id == ma.meter_id)
        .outerjoin(daily_freezes, and_(daily_freezes.c.meter_id == ma.meter_id, daily_freezes.c.day == yesterday))
        .where(s.organisation_id == organisation_id)
    )


def _fold(rows: Iterable[Any], counts: MeterCounts) -> dict[int, Tile]:
    """Rows (one per room and open meter) into one tile per room; meter figures added to ``counts``.

    The hot loop of the grid (10,000 rows for a large site): rows are unpacked by position, and a meter's state
    is decided inline by the rules in the module docstring.
    """
    tiles: dict[int, Tile] = {}
    no_account, offline, tripped, protect, low, normal = STATE_ORDER
    rank = _RANK
    for row in rows:
        (
            room_id,
            number,
            floor_id,
            floor,
            building_id,
            building,
            _site,
            meter_id,
            account_no,
            account_name,
            account_state,
            balance,
            online,
            relay_open,
            power_protect,
            own_levels,
            plan_levels,
            supply_on,
            last_total_wh,
            start_wh,
        ) = row
        tile = tiles.get(room_id)
        if tile is None:
            tile = tiles[room_id] = Tile(room_id, number, building_id, building, floor_id, floor)
        if meter_id is None:
            continue
        if account_state != "open":
            state = no_account
        elif not online:
            state = offline
        elif relay_open if relay_open is not None else supply_on is not None and not supply_on:
            state = tripped
        elif power_protect:
            state = protect
        elif balance is not None and balance < lowest_level_micros(own_levels, plan_levels):
            state = low
        else:
            state = normal
        if not tile.meter_ids or rank[state] < rank[tile.state]:
            tile.state = state
        tile.meter_ids.append(meter_id)
        if account_no is not None:
            tile.account_no, tile.account_name, tile.balance_micros = account_no, account_name, balance
        if last_total_wh is not None and start_wh is not None and last_total_wh >= start_wh:
            # a register cleared or replaced today gives no figure rather than a negative one
            today = last_total_wh - start_wh
            tile.today_wh = (tile.today_wh or 0) + today
            counts.today_wh += today
        counts.meters += 1
        if online:
            counts.online += 1
        else:
            counts.offline += 1
        if state is tripped:
            counts.tripped += 1
        elif state is low:
            counts.low += 1
    return tiles


def _matches(tile: Tile, needle: str) -> bool:
    if needle in tile.number.casefold() or any(needle in m.casefold() for m in tile.meter_ids):
        return True
    return any(needle in text.casefold() for text in (tile.account_no, tile.account_name) if text)


def grid(conn: Connection, organisation_id: int, wanted: GridFilter, now: dt.datetime) -> Grid | None:
    """The monitoring grid of one site (``wanted.site_id``, or the organisation's first); None if not found."""
    choices = org_sites(conn, organisation_id)
    site = next((s for s in choices if s.id == wanted.site_id), None) if wanted.site_id else next(iter(choices), None)
    if site is None:
        return None
    yesterday = local_midnight(now, zone(site.timezone)).astimezone(zone(site.timezone)).date() - dt.timedelta(days=1)
    query = _grid_query(organisation_id, yesterday).where(sites.c.id == site.id)
    if wanted.building_id is not None:
        query = query.where(buildings.c.id == wanted.building_id)
    if wanted.floor_id is not None:
        query = query.where(floors.c.id == wanted.floor_id)
    counts = MeterCounts()
    tiles = _fold(conn.execute(query), counts)
    by_state = dict.fromkeys(STATE_ORDER, 0)
    for tile in tiles.values():
        by_state[tile.state] += 1
    needle = wanted.search.strip().casefold()[:MAX_SEARCH_CHARS]
    chosen = [
        t
        for t in tiles.values()
        if (wanted.state is None or t.state is wanted.state) and (not needle or _matches(t, needle))
    ]
    chosen.sort(key=lambda t: (_natural(t.building), t.building_id, _natural(t.floor), t.floor_id, _natural(t.number)))
    truncated = len(chosen) > MAX_GRID_ROOMS
    rows: list[FloorRow] = []
    for tile in chosen[:MAX_GRID_ROOMS]:
        if not rows or rows[-1].floor_id != tile.floor_id:
            rows.append(FloorRow(tile.building, tile.floor, tile.floor_id, []))
        rows[-1].tiles.append(tile)
    return Grid(
        site,
        len(tiles),
        by_state,
        counts,
        rows,
        min(len(chosen), MAX_GRID_ROOMS),
        truncated,
        *_places(conn, site.id, wanted.building_id),
    )


def _places(
    conn: Connection, site_id: int, building_id: int | None
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The filter choices: the site's buildings, and the floors of the chosen building."""
    found = [
        (int(i), str(n))
        for i, n in conn.execute(select(buildings.c.id, buildings.c.name).where(buildings.c.site_id == site_id))
    ]
    found.sort(key=lambda choice: _natural(choice[1]))
    floor_choices: list[tuple[int, str]] = []
    if building_id is not None and any(i == building_id for i, _ in found):
        query = select(floors.c.id, floors.c.name).where(floors.c.building_id == building_id)
        floor_choices = sorted(((int(i), str(n)) for i, n in conn.execute(query)), key=lambda c: _natural(c[1]))
    return found, floor_choices


# -- the dashboard --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SiteSummary:
    site: SiteRef
    rooms: int = 0
    by_state: dict[TileState, int] = field(default_factory=lambda: dict.fromkeys(STATE_ORDER, 0))
    meters: MeterCounts = field(default_factory=MeterCounts)
    revenue_today_fen: int = 0
    payments_today: int = 0


@dataclass(slots=True)
class Dashboard:
    sites: list[SiteSummary]
    total: SiteSummary
    """Sums over every site (its ``site`` is a placeholder naming the organisation's first currency)."""


def dashboard(conn: Connection, organisation_id: int, now: dt.datetime) -> Dashboard:
    """Per site and in total: rooms by state, meters online / offline / tripped / low, today's kWh and revenue.

    One grid query and one revenue query per distinct site time zone (usually one), never one per room.
    """
    choices = org_sites(conn, organisation_id)
    summaries = {s.id: SiteSummary(s) for s in choices}
    for timezone in sorted({s.timezone for s in choices}):
        midnight = local_midnight(now, zone(timezone))
        yesterday = midnight.astimezone(zone(timezone)).date() - dt.timedelta(days=1)
        query = _grid_query(organisation_id, yesterday).where(sites.c.timezone == timezone)
        rows_by_site: dict[int, list[Any]] = {}
        for row in conn.execute(query):
            rows_by_site.setdefault(int(row.site_id), []).append(row)
        for site_id, rows in rows_by_site.items():
            summary = summaries[site_id]
            tiles = _fold(rows, summary.meters)
            summary.rooms = len(tiles)
            for tile in tiles.values():
                summary.by_state[tile.state] += 1
        _revenue(conn, organisation_id, timezone, midnight, now, summaries)
    total = SiteSummary(choices[0] if choices else SiteRef(0, "", "Asia/Shanghai", "CNY"))
    for summary in summaries.values():
        total.rooms += summary.rooms
        for state, count in summary.by_state.items():
            total.by_state[state] += count
        for name in ("meters", "online", "offline", "tripped", "low", "today_wh"):
            setattr(total.meters, name, getattr(total.meters, name) + getattr(summary.meters, name))
        total.revenue_today_fen += summary.revenue_today_fen
        total.payments_today += summary.payments_today
    return Dashboard([summaries[s.id] for s in choices], total)


def _revenue(
    conn: Connection,
    organisation_id: int,
    timezone: str,
    since: dt.datetime,
    until: dt.datetime,
    summaries: dict[int, SiteSummary],
) -> None:
    """Payments received today (orders paid in the site-local day so far), per site."""
    o, a = orders.c, accounts.c
    query = (
        select(a.site_id, func.count(), func.coalesce(func.sum(o.amount_fen), 0))
        .select_from(orders)
        .join(accounts, a.wallet_account_id == o.wallet_account_id)
        .join(sites, sites.c.id == a.site_id)
        .where(
            a.organisation_id == organisation_id,
            sites.c.timezone == timezone,
            o.paid_at >= since,
            o.paid_at <= until,
            o.state.in_(("paid", "refunded", "partially_refunded")),
        )
        .group_by(a.site_id)
    )
    for site_id, count, amount in conn.execute(query):
        summary = summaries.get(int(site_id))
        if summary is not None:
            summary.payments_today, summary.revenue_today_fen = int(count), int(amount)


# -- the room detail ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountInfo:
    id: int
    account_no: str
    name: str
    phone: str | None
    state: str
    wallet: str
    wallet_account_id: int
    balance_micros: int
    overdraft_limit_micros: int
    policy: prepaid.WalletPolicy
    supply_on: bool | None
    forecast: Forecast


@dataclass(frozen=True, slots=True)
class MeterInfo:
    id: str
    tariff_id: str
    tariff_name: str
    online: bool
    last_seen_at: dt.datetime | None
    relay_open: bool | None
    last_total_wh: int | None
    last_at: dt.datetime | None
    today_wh: int | None
    today_cost_micros: int
    tou_today_wh: dict[str, int] | None
    tou_month_wh: dict[str, int] | None


@dataclass(frozen=True, slots=True)
class EventLine:
    meter_id: str
    kind: str
    at: dt.datetime
    detail: str


@dataclass(frozen=True, slots=True)
class RoomDetail:
    room_id: int
    number: str
    area_centi_m2: int
    use: str
    floor: str
    building: str
    site: SiteRef
    account: AccountInfo | None
    meters: list[MeterInfo]
    events: list[EventLine]
    commands: list[QueuedCommand]
    tariffs: list[tuple[str, str]]

    @property
    def today_wh(self) -> int | None:
        known = [m.today_wh for m in self.meters if m.today_wh is not None]
        return sum(known) if known else None

    @property
    def today_cost_micros(self) -> int:
        return sum(m.today_cost_micros for m in self.meters)

    @property
    def tou_today_wh(self) -> dict[str, int] | None:
        return _sum_bands(m.tou_today_wh for m in self.meters)

    @property
    def tou_month_wh(self) -> dict[str, int] | None:
        return _sum_bands(m.tou_month_wh for m in self.meters)


def _sum_bands(parts: Iterable[dict[str, int] | None]) -> dict[str, int] | None:
    known = [p for p in parts if p is not None]
    if not known:
        return None
    return {band: sum(p[band] for p in known) for band in BANDS}


@dataclass(frozen=True, slots=True)
class RoomPlace:
    room_id: int
    number: str
    area_centi_m2: int
    use: str
    floor: str
    building: str
    site: SiteRef


def room_state(conn: Connection, organisation_id: int, room_id: int, now: dt.datetime) -> TileState | None:
    """The room's tile state, as the grid shows it; None if the organisation has no such room."""
    place = room_place(conn, organisation_id, room_id)
    if place is None:
        return None
    tz = zone(place.site.timezone)
    yesterday = local_midnight(now, tz).astimezone(tz).date() - dt.timedelta(days=1)
    tiles = _fold(conn.execute(_grid_query(organisation_id, yesterday).where(rooms.c.id == room_id)), MeterCounts())
    return tiles[room_id].state


def room_place(conn: Connection, organisation_id: int, room_id: int) -> RoomPlace | None:
    """A room of the organisation, or None (another organisation's room is not found either)."""
    r, f, b, s = rooms.c, floors.c, buildings.c, sites.c
    row = conn.execute(
        select(
            r.id,
            r.number,
            r.area_centi_m2,
            r.use,
            f.name.label("floor"),
            b.name.label("building"),
            s.id.label("site_id"),
            s.name.label("site"),
            s.timezone,
            s.currency,
        )
        .select_from(rooms)
        .join(floors, f.id == r.floor_id)
        .join(buildings, b.id == f.building_id)
        .join(sites, s.id == b.site_id)
        .where(r.id == room_id, s.organisation_id == organisation_id)
    ).first()
    if row is None:
        return None
    site = SiteRef(int(row.site_id), str(row.site), str(row.timezone), str(row.currency))
    return RoomPlace(
        int(row.id), str(row.number), int(row.area_centi_m2), str(row.use), str(row.floor), str(row.building), site
    )


def room_meter_ids(conn: Connection, room_id: int) -> list[str]:
    ma = meter_assignments.c
    query = select(ma.meter_id).where(ma.room_id == room_id, ma.valid_to.is_(None)).order_by(ma.meter_id)
    return [str(m) for m in conn.execute(query).scalars()]


def room_account(conn: Connection, room_id: int) -> tuple[int, str, int] | None:
    """(account id, wallet code, wallet account id) of the account on the room's open assignments, or None."""
    ma, a = meter_assignments.c, accounts.c
    row = conn.execute(
        select(a.id, ledger_accounts.c.code, a.wallet_account_id)
        .select_from(meter_assignments)
        .join(accounts, a.id == ma.account_id)
        .join(ledger_accounts, ledger_accounts.c.id == a.wallet_account_id)
        .where(ma.room_id == room_id, ma.valid_to.is_(None))
        .order_by(ma.valid_from.desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row.id), str(row.code), int(row.wallet_account_id))


def room_detail(conn: Connection, organisation_id: int, room_id: int, now: dt.datetime) -> RoomDetail | None:
    """Everything the room page shows; None when the organisation has no such room."""
    place = room_place(conn, organisation_id, room_id)
    if place is None:
        return None
    tz = zone(place.site.timezone)
    midnight = local_midnight(now, tz)
    meter_ids = room_meter_ids(conn, room_id)
    found = room_account(conn, room_id)
    account = None if found is None else _account_info(conn, found[0])
    infos = [_meter_info(conn, meter_id, midnight, tz) for meter_id in meter_ids]
    return RoomDetail(
        place.room_id,
        place.number,
        place.area_centi_m2,
        place.use,
        place.floor,
        place.building,
        place.site,
        account,
        infos,
        _events(conn, meter_ids),
        _commands(conn, meter_ids),
        tariff_choices(conn),
    )


def _account_info(conn: Connection, account_id: int) -> AccountInfo:
    a, la = accounts.c, ledger_accounts.c
    row = conn.execute(
        select(
            a.id,
            a.account_no,
            a.name,
            a.phone,
            a.state,
            a.wallet_account_id,
            la.code,
            la.balance_micros,
            la.overdraft_limit_micros,
            wallet_states.c.supply_on,
        )
        .select_from(accounts)
        .join(ledger_accounts, la.id == a.wallet_account_id)
        .outerjoin(wallet_states, wallet_states.c.wallet_account_id == a.wallet_account_id)
        .where(a.id == account_id)
    ).one()
    wallet_id = int(row.wallet_account_id)
    return AccountInfo(
        int(row.id),
        str(row.account_no),
        str(row.name),
        row.phone,
        str(row.state),
        str(row.code),
        wallet_id,
        int(row.balance_micros),
        int(row.overdraft_limit_micros),
        prepaid.get_policy(conn, wallet_id),
        None if row.supply_on is None else bool(row.supply_on),
        forecasts.wallet_forecast(conn, wallet_id),
    )


def _meter_info(conn: Connection, meter_id: str, midnight: dt.datetime, tz: ZoneInfo) -> MeterInfo:
    m, st, rs = meters.c, meter_status.c, meter_rating_state.c
    row = conn.execute(
        select(
            m.id,
            m.tariff_id,
            tariffs.c.name.label("tariff_name"),
            st.online,
            st.last_seen_at,
            st.relay_open,
            rs.last_total_wh,
            rs.last_at,
            rs.last_sharp_wh,
            rs.last_peak_wh,
            rs.last_flat_wh,
            rs.last_valley_wh,
        )
        .select_from(meters)
        .join(tariffs, tariffs.c.id == m.tariff_id)
        .outerjoin(meter_status, st.meter_id == m.id)
        .outerjoin(meter_rating_state, rs.meter_id == m.id)
        .where(m.id == meter_id)
    ).one()
    today = midnight.astimezone(tz).date()
    start = _start_of_day(conn, meter_id, today, midnight)
    last_bands = _bands(row.last_sharp_wh, row.last_peak_wh, row.last_flat_wh, row.last_valley_wh)
    today_wh = tou_today = None
    if start is not None and row.last_total_wh is not None and int(row.last_total_wh) >= start[0]:
        today_wh = int(row.last_total_wh) - start[0]
        if start[1] is not None and last_bands is not None:
            deltas = [last - first for last, first in zip(last_bands, start[1], strict=True)]
            tou_today = dict(zip(BANDS, deltas, strict=True)) if min(deltas) >= 0 else None
    cost = conn.execute(
        select(func.coalesce(func.sum(readings.c.amount_micros), 0)).where(
            readings.c.meter_id == meter_id, readings.c.at > midnight, readings.c.status == "rated"
        )
    ).scalar_one()
    return MeterInfo(
        str(row.id),
        str(row.tariff_id),
        str(row.tariff_name),
        bool(row.online),
        row.last_seen_at,
        row.relay_open,
        None if row.last_total_wh is None else int(row.last_total_wh),
        row.last_at,
        today_wh,
        int(cost),
        tou_today,
        _month_bands(conn, meter_id, today, tou_today),
    )


def _bands(*values: Any) -> tuple[int, int, int, int] | None:
    if any(v is None for v in values):
        return None
    sharp, peak, flat, valley = (int(v) for v in values)
    return sharp, peak, flat, valley


def _start_of_day(
    conn: Connection, meter_id: str, today: dt.date, midnight: dt.datetime
) -> tuple[int, tuple[int, int, int, int] | None] | None:
    """The register (total, bands) at the start of today: yesterday's freeze, else the last reading before."""
    d = daily_freezes.c
    frozen = conn.execute(
        select(d.total_wh, d.sharp_wh, d.peak_wh, d.flat_wh, d.valley_wh).where(
            d.meter_id == meter_id, d.day == today - dt.timedelta(days=1)
        )
    ).first()
    if frozen is None:
        rd = readings.c
        frozen = conn.execute(
            select(rd.total_wh, rd.sharp_wh, rd.peak_wh, rd.flat_wh, rd.valley_wh)
            .where(rd.meter_id == meter_id, rd.at <= midnight, rd.status != "quarantined")
            .order_by(rd.at.desc())
            .limit(1)
        ).first()
    if frozen is None:
        return None
    return int(frozen.total_wh), _bands(frozen.sharp_wh, frozen.peak_wh, frozen.flat_wh, frozen.valley_wh)


def _month_bands(
    conn: Connection, meter_id: str, today: dt.date, tou_today: dict[str, int] | None
) -> dict[str, int] | None:
    """This month's energy per band: the daily freezes of the month so far plus today's split."""
    d = daily_freezes.c
    sums = conn.execute(
        select(*(func.sum(d[f"{band}_energy_wh"]) for band in BANDS), func.count(d[f"{BANDS[0]}_energy_wh"])).where(
            d.meter_id == meter_id, d.day >= today.replace(day=1), d.day < today
        )
    ).one()
    if not sums[-1] and tou_today is None:
        return None
    month = {band: int(sums[i] or 0) for i, band in enumerate(BANDS)}
    for band, wh in (tou_today or {}).items():
        month[band] += wh
    return month


def _events(conn: Connection, meter_ids: Sequence[str]) -> list[EventLine]:
    if not meter_ids:
        return []
    e = meter_events.c
    query = select(e.meter_id, e.kind, e.at, e.detail).where(e.meter_id.in_(meter_ids)).order_by(e.at.desc())
    return [EventLine(str(r.meter_id), str(r.kind), r.at, str(r.detail)) for r in conn.execute(query.limit(MAX_EVENTS))]


def _commands(conn: Connection, meter_ids: Sequence[str]) -> list[QueuedCommand]:
    found: list[QueuedCommand] = []
    for meter_id in meter_ids:
        found += queue.commands_of(conn, meter_id, limit=MAX_COMMANDS)
    found.sort(key=lambda c: c.seq, reverse=True)
    return found[:MAX_COMMANDS]


def room_commands(conn: Connection, organisation_id: int, room_id: int) -> list[QueuedCommand] | None:
    """The room's recent commands (the page refreshes them while any is open); None if no such room."""
    if room_place(conn, organisation_id, room_id) is None:
        return None
    return _commands(conn, room_meter_ids(conn, room_id))


def tariff_choices(conn: Connection) -> list[tuple[str, str]]:
    query = select(tariffs.c.id, tariffs.c.name).order_by(tariffs.c.name).limit(500)
    return [(str(i), str(n)) for i, n in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class CurvePoint:
    at: dt.datetime
    voltage_dv: int | None
    current_ma: int | None
    power_dw: int | None
    pf_milli: int | None


def room_curves(
    conn: Connection, organisation_id: int, room_id: int, now: dt.datetime, hours: int = CURVE_HOURS
) -> dict[str, list[CurvePoint]] | None:
    """Per meter of the room, its samples of the last ``hours``; None if no such room."""
    if room_place(conn, organisation_id, room_id) is None:
        return None
    since = now - dt.timedelta(hours=hours)
    found: dict[str, list[CurvePoint]] = {}
    for meter_id in room_meter_ids(conn, room_id):
        points = sample_store.curve(conn, meter_id, since, now + dt.timedelta(seconds=1))
        found[meter_id] = [CurvePoint(p.at, p.voltage_dv, p.current_ma, p.power_dw, p.pf_milli) for p in points]
    return found
