"""Property billing (issue 9): custom charge items, common-area apportionment and post-paid bills.

The rules are in ``powergate.domain.billing``; this module reads the structure (rooms, areas, who held which
room when), the daily freezes and the tariffs, and writes the results once:

- **Charges** (``create_charge_item``, ``run_charges``): a periodic item is charged in arrears, once its period
  has ended (on the item's due day of the month after), shared among the accounts that held each room by days
  held; a one-off item on its date to that day's holders. Every (item, period, account, room) is a
  ``charge_postings`` row (UNIQUE): a second run, or two workers, charge nothing twice.
- **Apportionment** (``create_rule``, ``new_rule_version``, ``run_apportionment``): a month of a master meter's
  energy (or its remainder after its sub-meters), costed at a set price or at the master's own average, shared
  by ratio, area or usage with exact sums; a month is computed once with the rule version valid on its first day.
- **Collection**: ``deduct`` posts a ledger entry from the wallet (kind ``standing_charge`` to
  ``revenue:charge:<code>`` for a charge; ``deduction`` to ``revenue:apportionment:<rule>`` for a share) and runs
  the balance policy (a fee can make a balance cross a warning level or trip the relay like consumption does);
  ``bill`` adds a line to the account's ``charges`` bill of the period, posted to the ledger when it is paid.
- **Post-paid** (``set_postpaid``, ``draft_postpaid_bills``, ``confirm_bill``, ``issue_bill``, ``mark_overdue``,
  ``pay_bill``, ``settle_paid_bills``): a bill per account and period from the frozen registers rated with the
  meter's tariff (``domain.rating.quote``, exactly what ``powergate tariff quote`` computes for the same
  readings), with its TOU split, tiers and standing charges. Paying a bill is an order through the usual payment
  channels for the bill's amount (rounded half up to the fen); when the order is paid, ``settle_paid_bills``
  marks the bill paid and posts its unposted lines.

Every change is audited with who and why in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from powergate.domain.billing import (
    Basis,
    Frequency,
    Holding,
    Method,
    Period,
    Schedule,
    Source,
    apportion,
    cost_of_share,
    days_held,
    period_of,
    periods_between,
    prorate_by_days,
    room_amount,
    round_half_up,
    shared_energy,
)
from powergate.domain.calendar import SiteCalendar
from powergate.domain.ledger import EntryKind, Posting, make_entry, revenue_code
from powergate.domain.money import format_money
from powergate.domain.notifications import EventKind
from powergate.domain.rating import MeterQuote, Rated, RatingContext, Reading, ReadingKind, quote
from powergate.domain.tariff_files import load_tariff
from powergate.services import notices, prepaid
from powergate.services.accounts import Rejected
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, meters
from powergate.store.tables_billing import (
    apportion_rule_versions,
    apportion_rules,
    apportion_runs,
    apportion_shares,
    bill_lines,
    bills,
    charge_items,
    charge_postings,
    postpaid_accounts,
)
from powergate.store.tables_freeze import daily_freezes
from powergate.store.tables_payments import orders
from powergate.store.tables_structure import accounts, buildings, floors, meter_assignments, rooms, sites

log = logging.getLogger(__name__)

MAX_CODE_CHARS = 32
MAX_RATE_MICROS = 10_000_000_000  # ¥10,000 per room or per m² and period: a typo guard
MAX_DUE_DAYS = 90
MICROS_PER_FEN = 10_000
BAND_NAMES = ("sharp", "peak", "flat", "valley")


# --- who held which room when ------------------------------------------------------------------------------


def _site_zone(conn: Connection, site_id: int) -> ZoneInfo | None:
    zone = conn.execute(select(sites.c.timezone).where(sites.c.id == site_id)).scalar()
    return None if zone is None else ZoneInfo(str(zone))


def _local_date(at: dt.datetime, zone: ZoneInfo) -> dt.date:
    return at.astimezone(zone).date()


def _local_midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def room_holdings(
    conn: Connection, room_ids: Sequence[int], period: Period, zone: ZoneInfo
) -> dict[int, list[Holding]]:
    """Per room, the accounts that held it in ``period`` and for how many days (several meters or several
    assignments of one account in one room count each day once)."""
    start, end = _local_midnight(period.first, zone), _local_midnight(period.last + dt.timedelta(days=1), zone)
    ma = meter_assignments.c
    rows = conn.execute(
        select(ma.room_id, ma.account_id, ma.valid_from, ma.valid_to).where(
            ma.room_id.in_(list(room_ids)), ma.valid_from < end, or_(ma.valid_to.is_(None), ma.valid_to > start)
        )
    ).all()
    days: dict[tuple[int, int], set[dt.date]] = {}
    for room_id, account_id, valid_from, valid_to in rows:
        held_from = _local_date(valid_from, zone)
        held_to = None if valid_to is None else _local_date(valid_to, zone)
        count = days_held(period.first, period.last, held_from, held_to)
        if count == 0:
            continue
        first = max(period.first, held_from)
        found = days.setdefault((int(room_id), int(account_id)), set())
        found.update(first + dt.timedelta(days=i) for i in range(count))
    by_room: dict[int, list[Holding]] = {}
    for (room_id, account_id), held in sorted(days.items()):
        by_room.setdefault(room_id, []).append(Holding(account_id, len(held)))
    return by_room


# --- charge items ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargeItemSpec:
    code: str
    name: str
    basis: Basis
    rate_micros: int
    """The fixed amount per room and period, or the price per m² and period."""
    schedule: Schedule
    collection: str = "deduct"
    scope: str = "site"
    scope_ids: tuple[int, ...] = ()


def create_charge_item(
    conn: Connection, site_id: int, spec: ChargeItemSpec, *, actor: str, now: dt.datetime
) -> int | Rejected:
    """A new custom charge item for a site (audited)."""
    problem = _check_item(conn, site_id, spec)
    if problem is not None:
        return problem
    try:
        with conn.begin_nested():
            item_id = conn.execute(
                insert(charge_items).values(
                    site_id=site_id,
                    code=spec.code,
                    name=spec.name.strip(),
                    basis=spec.basis.value,
                    rate_micros=spec.rate_micros,
                    frequency=spec.schedule.frequency.value,
                    start_on=spec.schedule.start,
                    due_day=spec.schedule.day,
                    end_on=spec.schedule.end,
                    collection=spec.collection,
                    scope=spec.scope,
                    scope_ids=json.dumps(sorted(spec.scope_ids)),
                    created_at=now,
                    created_by=actor,
                )
            ).inserted_primary_key
    except IntegrityError:
        return Rejected("code", f"charge item {spec.code!r} exists already at site {site_id}")
    assert item_id is not None
    detail = {"code": spec.code, "basis": spec.basis.value, "rate_micros": spec.rate_micros}
    record_audit(conn, actor, "create_charge_item", f"charge_item:{item_id[0]}", spec.name, detail, now)
    return int(item_id[0])


def _check_item(conn: Connection, site_id: int, spec: ChargeItemSpec) -> Rejected | None:
    if conn.execute(select(sites.c.id).where(sites.c.id == site_id)).first() is None:
        return Rejected("site", f"no site {site_id}")
    if not spec.code or len(spec.code) > MAX_CODE_CHARS or not spec.code.replace("-", "").replace("_", "").isalnum():
        return Rejected("code", f"must be 1..{MAX_CODE_CHARS} letters, digits, '-' or '_', got {spec.code!r}")
    if not spec.name.strip() or len(spec.name) > 120:
        return Rejected("name", "must be 1..120 characters")
    if not 0 <= spec.rate_micros <= MAX_RATE_MICROS:
        return Rejected("rate_micros", f"must be 0..{MAX_RATE_MICROS}, got {spec.rate_micros}")
    if spec.collection not in ("deduct", "bill"):
        return Rejected("collection", f"must be deduct or bill, got {spec.collection!r}")
    if spec.scope not in ("site", "buildings", "floors", "rooms"):
        return Rejected("scope", f"must be site, buildings, floors or rooms, got {spec.scope!r}")
    if spec.scope != "site" and not spec.scope_ids:
        return Rejected("scope_ids", f"scope {spec.scope} needs at least one id")
    schedule_problem = spec.schedule.problem()
    if schedule_problem is not None:
        return Rejected(f"schedule.{schedule_problem[0]}", schedule_problem[1])
    return None


def _scope_rooms(conn: Connection, site_id: int, scope: str, ids: Sequence[int]) -> dict[int, int]:
    """room id -> area (centi-m²) of the rooms an item covers."""
    query = (
        select(rooms.c.id, rooms.c.area_centi_m2)
        .join(floors, floors.c.id == rooms.c.floor_id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .where(buildings.c.site_id == site_id)
    )
    if scope == "buildings":
        query = query.where(buildings.c.id.in_(list(ids)))
    elif scope == "floors":
        query = query.where(floors.c.id.in_(list(ids)))
    elif scope == "rooms":
        query = query.where(rooms.c.id.in_(list(ids)))
    return {int(room): int(area) for room, area in conn.execute(query)}


@dataclass(slots=True)
class ChargeRun:
    charged: int = 0
    """(item, period, account, room) rows written."""
    amount_micros: int = 0
    skipped: int = 0
    """Already charged by an earlier run."""
    problems: list[str] = field(default_factory=list)


def due_periods(schedule: Schedule, today: dt.date) -> list[Period]:
    """The periods of a schedule that are due by ``today``: one-off on its date; periodic once the period has
    ended, on its due day of the following month."""
    if schedule.frequency is Frequency.ONCE:
        return periods_between(schedule, schedule.start, today)
    found = []
    for candidate in periods_between(schedule, schedule.start, today):
        charge_on = (candidate.last + dt.timedelta(days=1)).replace(day=schedule.day)
        if charge_on <= today:
            found.append(Period(candidate.key, candidate.first, candidate.last, charge_on))
    return found


def run_charges(engine: Engine, now: dt.datetime, *, site_id: int | None = None) -> ChargeRun:
    """Charge every active item for every period due by today (site-local), once."""
    run = ChargeRun()
    with engine.connect() as conn:
        query = select(charge_items).where(charge_items.c.active.is_(True)).order_by(charge_items.c.id)
        if site_id is not None:
            query = query.where(charge_items.c.site_id == site_id)
        items = conn.execute(query).all()
    for item in items:
        with engine.begin() as conn:
            zone = _site_zone(conn, int(item.site_id))
            assert zone is not None
            schedule = Schedule(Frequency(item.frequency), item.start_on, int(item.due_day), item.end_on)
            for period in due_periods(schedule, _local_date(now, zone)):
                _charge_period(conn, item, period, zone, now, run)
    return run


def _charge_period(
    conn: Connection, item: Any, period: Period, zone: ZoneInfo, now: dt.datetime, run: ChargeRun
) -> None:
    room_areas = _scope_rooms(conn, int(item.site_id), str(item.scope), json.loads(item.scope_ids))
    if not room_areas:
        return
    holdings = room_holdings(conn, sorted(room_areas), period, zone)
    charged_wallets: set[int] = set()
    for room_id, held in holdings.items():
        amount = room_amount(Basis(item.basis), int(item.rate_micros), room_areas[room_id])
        shares = prorate_by_days(amount, period.days, held)
        days_by_account = {h.account_id: h.days for h in held}
        for account_id, share in shares.items():
            row = {
                "item_id": item.id,
                "period_key": period.key,
                "account_id": account_id,
                "room_id": room_id,
                "days": days_by_account[account_id],
                "period_days": period.days,
                "amount_micros": share,
                "created_at": now,
            }
            try:
                with conn.begin_nested():
                    posting_id = conn.execute(insert(charge_postings).values(**row)).inserted_primary_key
            except IntegrityError:
                run.skipped += 1
                continue
            assert posting_id is not None
            run.charged += 1
            run.amount_micros += share
            if share == 0:
                continue
            account = _account(conn, account_id)
            description = f"{item.name} {period.key} room {room_id} ({row['days']}/{period.days} days)"
            revenue = revenue_code(f"charge:{item.code}")
            key = f"charge:{item.id}:{period.key}:{account_id}:{room_id}"
            if item.collection == "deduct":
                at = _local_midnight(period.due_on, zone)
                _deduct(conn, key, EntryKind.STANDING_CHARGE, account.wallet, revenue, share, at, description, now)
                conn.execute(update(charge_postings).where(charge_postings.c.id == posting_id[0]).values(entry_key=key))
                charged_wallets.add(account.wallet_id)
            else:
                bill_id = _charges_bill(conn, account, period, now)
                _add_line(conn, bill_id, "charge", description, None, share, posted=False, revenue=revenue)
                conn.execute(
                    update(charge_postings).where(charge_postings.c.id == posting_id[0]).values(bill_id=bill_id)
                )
    if charged_wallets:
        prepaid.evaluate(conn, sorted(charged_wallets), now)
    record_audit(
        conn,
        "system:billing",
        "charge",
        f"charge_item:{item.id}",
        f"{item.name} for {period.key}",
        {"period": period.key, "rooms": len(holdings)},
        now,
    )


# --- accounts, wallets, ledger -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AccountRow:
    id: int
    site_id: int
    account_no: str
    wallet: str
    wallet_id: int


def _account(conn: Connection, account_id: int) -> _AccountRow:
    row = conn.execute(
        select(accounts.c.id, accounts.c.site_id, accounts.c.account_no, ledger_accounts.c.code, ledger_accounts.c.id)
        .join(ledger_accounts, ledger_accounts.c.id == accounts.c.wallet_account_id)
        .where(accounts.c.id == account_id)
    ).first()
    assert row is not None, f"no account {account_id}"
    return _AccountRow(int(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4]))


def _deduct(
    conn: Connection,
    key: str,
    kind: EntryKind,
    wallet: str,
    revenue: str,
    amount_micros: int,
    at: dt.datetime,
    description: str,
    now: dt.datetime,
) -> None:
    entry = make_entry(
        key, kind, at, (Posting(wallet, -amount_micros), Posting(revenue, amount_micros)), description[:200]
    )
    ledger_store.post(conn, entry, now)


# --- bills -------------------------------------------------------------------------------------------------


def _bill_no(account: _AccountRow, kind: str, first: dt.date) -> str:
    return f"B{first:%Y%m}-{'P' if kind == 'postpaid' else 'C'}-{account.id}-{first:%d}"


def _charges_bill(conn: Connection, account: _AccountRow, period: Period, now: dt.datetime) -> int:
    """The draft ``charges`` bill of the account for the month the period ends in (created if missing)."""
    first = period.last.replace(day=1)
    last = period_of(Frequency.MONTHLY, first).last
    found = conn.execute(
        select(bills.c.id, bills.c.state).where(
            bills.c.account_id == account.id, bills.c.kind == "charges", bills.c.period_first == first
        )
    ).first()
    if found is not None:
        assert found.state == "draft", f"bill {found.id} is {found.state}: charges for {period.key} come too late"
        return int(found.id)
    return _new_bill(conn, account, "charges", first, last, "system:billing", now)


def _new_bill(
    conn: Connection, account: _AccountRow, kind: str, first: dt.date, last: dt.date, actor: str, now: dt.datetime
) -> int:
    values = {
        "bill_no": _bill_no(account, kind, first),
        "site_id": account.site_id,
        "account_id": account.id,
        "wallet_account_id": account.wallet_id,
        "kind": kind,
        "period_first": first,
        "period_last": last,
        "state": "draft",
        "amount_micros": 0,
        "created_at": now,
        "created_by": actor,
    }
    bill_id = conn.execute(insert(bills).values(**values)).inserted_primary_key
    assert bill_id is not None
    return int(bill_id[0])


def _add_line(
    conn: Connection,
    bill_id: int,
    kind: str,
    description: str,
    quantity_wh: int | None,
    amount_micros: int,
    *,
    posted: bool,
    revenue: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    line_no = int(
        conn.execute(
            select(func.coalesce(func.max(bill_lines.c.line_no), 0)).where(bill_lines.c.bill_id == bill_id)
        ).scalar_one()
    )
    conn.execute(
        insert(bill_lines).values(
            bill_id=bill_id,
            line_no=line_no + 1,
            kind=kind,
            description=description[:200],
            quantity_wh=quantity_wh,
            amount_micros=amount_micros,
            posted=posted,
            revenue=revenue,
            detail=json.dumps(detail or {}, sort_keys=True),
        )
    )
    conn.execute(update(bills).where(bills.c.id == bill_id).values(amount_micros=bills.c.amount_micros + amount_micros))


@dataclass(frozen=True, slots=True)
class BillLine:
    line_no: int
    kind: str
    description: str
    quantity_wh: int | None
    amount_micros: int
    posted: bool
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Bill:
    id: int
    bill_no: str
    site_id: int
    account_id: int
    account_no: str
    kind: str
    period_first: dt.date
    period_last: dt.date
    state: str
    amount_micros: int
    due_on: dt.date | None
    order_no: str | None
    lines: tuple[BillLine, ...]

    @property
    def amount_fen(self) -> int:
        """What a tenant pays: the amount rounded half up to the fen."""
        return round_half_up(self.amount_micros, MICROS_PER_FEN)


def get_bill(conn: Connection, bill_no: str) -> Bill | None:
    row = conn.execute(
        select(bills, accounts.c.account_no)
        .join(accounts, accounts.c.id == bills.c.account_id)
        .where(bills.c.bill_no == bill_no)
    ).first()
    if row is None:
        return None
    lines = conn.execute(select(bill_lines).where(bill_lines.c.bill_id == row.id).order_by(bill_lines.c.line_no)).all()
    return Bill(
        int(row.id),
        str(row.bill_no),
        int(row.site_id),
        int(row.account_id),
        str(row.account_no),
        str(row.kind),
        row.period_first,
        row.period_last,
        str(row.state),
        int(row.amount_micros),
        row.due_on,
        row.order_no,
        tuple(
            BillLine(
                int(line.line_no),
                str(line.kind),
                str(line.description),
                None if line.quantity_wh is None else int(line.quantity_wh),
                int(line.amount_micros),
                bool(line.posted),
                json.loads(line.detail),
            )
            for line in lines
        ),
    )


def list_bills(
    conn: Connection, site_id: int, *, state: str | None = None, account_id: int | None = None, limit: int = 1_000
) -> list[Bill]:
    query = select(bills.c.bill_no).where(bills.c.site_id == site_id)
    if state is not None:
        query = query.where(bills.c.state == state)
    if account_id is not None:
        query = query.where(bills.c.account_id == account_id)
    found = [
        get_bill(conn, str(no))
        for no in conn.execute(query.order_by(bills.c.period_first, bills.c.id).limit(limit)).scalars()
    ]
    return [bill for bill in found if bill is not None]


def _transition(
    conn: Connection,
    bill_no: str,
    before: Iterable[str],
    after: str,
    values: dict[str, Any],
    actor: str,
    reason: str,
    now: dt.datetime,
) -> Bill | Rejected:
    bill = get_bill(conn, bill_no)
    if bill is None:
        return Rejected("bill_no", f"no bill {bill_no!r}")
    allowed = tuple(before)
    if bill.state not in allowed:
        return Rejected(
            "state", f"bill {bill_no} is {bill.state}; only a {' or '.join(allowed)} bill can become {after}"
        )
    changed = conn.execute(
        update(bills).where(bills.c.id == bill.id, bills.c.state == bill.state).values(state=after, **values)
    )
    if changed.rowcount != 1:
        return Rejected("state", f"bill {bill_no} changed meanwhile; try again")
    record_audit(
        conn, actor, f"bill_{after}", f"bill:{bill_no}", reason, {"from": bill.state, **_jsonable(values)}, now
    )
    updated = get_bill(conn, bill_no)
    assert updated is not None
    return updated


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.date | dt.datetime) else v for k, v in values.items()}


def confirm_bill(conn: Connection, bill_no: str, *, actor: str, reason: str, now: dt.datetime) -> Bill | Rejected:
    """Draft -> confirmed: a manager checked it; nothing can be added any more."""
    return _transition(conn, bill_no, ("draft",), "confirmed", {"confirmed_at": now}, actor, reason, now)


def issue_bill(conn: Connection, bill_no: str, *, actor: str, reason: str, now: dt.datetime) -> Bill | Rejected:
    """Confirmed -> issued, with its due date (the account's post-paid days, or 15 days for a charges bill)."""
    bill = get_bill(conn, bill_no)
    if bill is None:
        return Rejected("bill_no", f"no bill {bill_no!r}")
    due_days = conn.execute(
        select(postpaid_accounts.c.due_days).where(postpaid_accounts.c.account_id == bill.account_id)
    ).scalar()
    zone = _site_zone(conn, bill.site_id)
    assert zone is not None
    due_on = _local_date(now, zone) + dt.timedelta(days=int(due_days or 15))
    issued = _transition(
        conn, bill_no, ("confirmed",), "issued", {"issued_at": now, "due_on": due_on}, actor, reason, now
    )
    if isinstance(issued, Bill):
        _announce(conn, issued, EventKind.BILL_ISSUED, now)
    return issued


def void_bill(conn: Connection, bill_no: str, *, actor: str, reason: str, now: dt.datetime) -> Bill | Rejected:
    return _transition(conn, bill_no, ("draft", "confirmed", "issued", "overdue"), "void", {}, actor, reason, now)


def mark_overdue(engine: Engine, now: dt.datetime) -> list[str]:
    """Issued bills whose due date has passed (site-local) become overdue; returns their numbers."""
    done: list[str] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(bills.c.bill_no, bills.c.due_on, sites.c.timezone)
            .join(sites, sites.c.id == bills.c.site_id)
            .where(bills.c.state == "issued")
        ).all()
        for bill_no, due_on, zone in rows:
            if _local_date(now, ZoneInfo(str(zone))) > due_on:
                result = _transition(
                    conn, str(bill_no), ("issued",), "overdue", {}, "system:billing", f"not paid by {due_on}", now
                )
                if isinstance(result, Bill):
                    _announce(conn, result, EventKind.BILL_OVERDUE, now)
                    done.append(str(bill_no))
    return done


def _announce(conn: Connection, bill: Bill, kind: EventKind, now: dt.datetime) -> None:
    """Tell the tenant (arrears notices); a template problem never blocks the bill, it is logged."""
    wallet_id = int(conn.execute(select(bills.c.wallet_account_id).where(bills.c.id == bill.id)).scalar_one())
    extra = {
        "bill_no": bill.bill_no,
        "amount": notices.money_of_wallet(conn, wallet_id, bill.amount_fen * MICROS_PER_FEN),
        "due": "" if bill.due_on is None else bill.due_on.isoformat(),
        "period": f"{bill.period_first.isoformat()}..{bill.period_last.isoformat()}",
    }
    problem = notices.account_event(conn, kind, f"{kind.value}:{bill.bill_no}", wallet_id, now, extra, now)
    if problem is not None:
        log.warning("bill %s: %s notice: %s", bill.bill_no, kind.value, problem)


def arrears(conn: Connection, site_id: int) -> list[Bill]:
    """Issued and overdue bills not yet paid, oldest first: the arrears list."""
    query = select(bills.c.bill_no).where(bills.c.site_id == site_id, bills.c.state.in_(("issued", "overdue")))
    found = [get_bill(conn, str(no)) for no in conn.execute(query.order_by(bills.c.due_on, bills.c.id)).scalars()]
    return [bill for bill in found if bill is not None]


def attach_order(conn: Connection, bill_no: str, order_no: str, *, actor: str, now: dt.datetime) -> Bill | Rejected:
    """Record that ``order_no`` pays the bill (an issued or overdue one); ``settle_paid_bills`` completes it."""
    bill = get_bill(conn, bill_no)
    if bill is None:
        return Rejected("bill_no", f"no bill {bill_no!r}")
    if bill.state not in ("issued", "overdue"):
        return Rejected("state", f"bill {bill_no} is {bill.state}; only an issued or overdue bill can be paid")
    order = conn.execute(
        select(orders.c.amount_fen, orders.c.wallet_account_id).where(orders.c.order_no == order_no)
    ).first()
    if order is None:
        return Rejected("order_no", f"no order {order_no!r}")
    wallet_id = conn.execute(select(bills.c.wallet_account_id).where(bills.c.id == bill.id)).scalar_one()
    if int(order.amount_fen) != bill.amount_fen or int(order.wallet_account_id) != int(wallet_id):
        return Rejected("order_no", f"order {order_no} is not for {bill.amount_fen} fen to this account's wallet")
    conn.execute(update(bills).where(bills.c.id == bill.id).values(order_no=order_no))
    record_audit(conn, actor, "bill_order", f"bill:{bill_no}", f"paid by order {order_no}", {"order_no": order_no}, now)
    return bill


def settle_paid_bills(engine: Engine, now: dt.datetime) -> list[str]:
    """Bills whose order is paid become paid; their unposted lines are posted from the wallet (the payment
    credited it in the same amount, so the wallet nets to the fen rounding)."""
    done: list[str] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(bills.c.bill_no, bills.c.id, orders.c.paid_at)
            .join(orders, orders.c.order_no == bills.c.order_no)
            .where(
                bills.c.state.in_(("issued", "overdue")), orders.c.state.in_(("paid", "partially_refunded", "refunded"))
            )
        ).all()
        for bill_no, bill_id, paid_at in rows:
            bill = get_bill(conn, str(bill_no))
            assert bill is not None
            account = _account(conn, bill.account_id)
            for line in bill.lines:
                if line.posted:
                    continue
                revenue = conn.execute(
                    select(bill_lines.c.revenue).where(
                        bill_lines.c.bill_id == bill_id, bill_lines.c.line_no == line.line_no
                    )
                ).scalar_one()
                key = f"bill:{bill_no}:{line.line_no}"
                kind = EntryKind.DEDUCTION if line.kind == "apportionment" else EntryKind.STANDING_CHARGE
                _deduct(
                    conn, key, kind, account.wallet, str(revenue), line.amount_micros, paid_at, line.description, now
                )
                conn.execute(
                    update(bill_lines)
                    .where(bill_lines.c.bill_id == bill_id, bill_lines.c.line_no == line.line_no)
                    .values(posted=True)
                )
            result = _transition(
                conn,
                str(bill_no),
                ("issued", "overdue"),
                "paid",
                {"paid_at": paid_at},
                "system:billing",
                "order paid",
                now,
            )
            if isinstance(result, Bill):
                done.append(str(bill_no))
    return done


# --- post-paid ---------------------------------------------------------------------------------------------


def set_postpaid(
    conn: Connection, account_id: int, due_days: int, *, actor: str, reason: str, now: dt.datetime
) -> Rejected | None:
    """Make an account post-paid: it is billed after use and never tripped or warned for its balance."""
    if not 1 <= due_days <= MAX_DUE_DAYS:
        return Rejected("due_days", f"must be 1..{MAX_DUE_DAYS}, got {due_days}")
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        return Rejected("account", f"no account {account_id}")
    account = _account(conn, account_id)
    changed = conn.execute(
        update(postpaid_accounts).where(postpaid_accounts.c.account_id == account_id).values(due_days=due_days)
    )
    if changed.rowcount == 0:
        conn.execute(insert(postpaid_accounts).values(account_id=account_id, due_days=due_days, since=now))
    policy = prepaid.get_policy(conn, account.wallet_id)
    updated = prepaid.WalletPolicy(
        warning_levels_micros=(),
        reconnect_micros=policy.reconnect_micros,
        power_protect=True,
        temporary_until=policy.temporary_until,
        friendly_window=policy.friendly_window,
        billing_mode=policy.billing_mode,
    )
    problem = prepaid.set_policy(conn, account.wallet_id, updated, now)
    if problem is not None:
        return Rejected(problem.field, problem.message)
    record_audit(conn, actor, "set_postpaid", f"account:{account_id}", reason, {"due_days": due_days}, now)
    return None


@dataclass(frozen=True, slots=True)
class DraftResult:
    bills: tuple[str, ...]
    problems: tuple[str, ...]


def frozen_readings(conn: Connection, meter_id: str, first: dt.date, last: dt.date) -> list[Reading]:
    """The meter's registers at each local midnight from the start of ``first`` to the end of ``last``, from its
    daily freezes (the freeze of day D holds the registers at the midnight after D)."""
    rows = conn.execute(
        select(daily_freezes)
        .where(
            daily_freezes.c.meter_id == meter_id,
            daily_freezes.c.day >= first - dt.timedelta(days=1),
            daily_freezes.c.day <= last,
        )
        .order_by(daily_freezes.c.day)
    ).all()
    found = []
    for row in rows:
        bands = (row.sharp_wh, row.peak_wh, row.flat_wh, row.valley_wh)
        found.append(
            Reading(
                f"{meter_id}@frozen@{row.day.isoformat()}",
                meter_id,
                row.frozen_at,
                int(row.total_wh),
                None if any(b is None for b in bands) else (int(bands[0]), int(bands[1]), int(bands[2]), int(bands[3])),
                ReadingKind.REGULAR,
            )
        )
    return found


def quote_meter(conn: Connection, meter_id: str, first: dt.date, last: dt.date) -> MeterQuote | None:
    meter = conn.execute(select(meters.c.tariff_id, meters.c.timezone).where(meters.c.id == meter_id)).first()
    assert meter is not None
    readings = frozen_readings(conn, meter_id, first, last)
    if len(readings) < 2:
        return None
    tariff = load_tariff(metering.tariff_document(conn, str(meter.tariff_id)), source=f"tariff {meter.tariff_id}")
    ctx = RatingContext(tariff, SiteCalendar.china(), ZoneInfo(str(meter.timezone)))
    (result,) = quote(readings, ctx)
    return result


def draft_postpaid_bills(
    engine: Engine, site_id: int, first: dt.date, last: dt.date, *, actor: str, now: dt.datetime
) -> DraftResult | Rejected:
    """A draft bill per post-paid account of the site for [first, last] (site-local dates), from its meters'
    frozen registers; an account already billed for the period is left alone."""
    if last < first:
        return Rejected("last", f"{last} is before {first}")
    made: list[str] = []
    problems: list[str] = []
    with engine.begin() as conn:
        zone = _site_zone(conn, site_id)
        if zone is None:
            return Rejected("site", f"no site {site_id}")
        if _local_date(now, zone) <= last:
            return Rejected("last", f"{last} has not ended yet at the site")
        account_ids = (
            conn.execute(
                select(accounts.c.id)
                .join(postpaid_accounts, postpaid_accounts.c.account_id == accounts.c.id)
                .where(accounts.c.site_id == site_id)
                .order_by(accounts.c.id)
            )
            .scalars()
            .all()
        )
        for account_id in account_ids:
            exists = conn.execute(
                select(bills.c.id).where(
                    bills.c.account_id == account_id, bills.c.kind == "postpaid", bills.c.period_first == first
                )
            ).first()
            if exists is not None:
                continue
            account = _account(conn, int(account_id))
            meter_ids = (
                conn.execute(
                    select(meter_assignments.c.meter_id)
                    .where(
                        meter_assignments.c.account_id == account_id,
                        meter_assignments.c.valid_from < _local_midnight(last + dt.timedelta(days=1), zone),
                        or_(
                            meter_assignments.c.valid_to.is_(None),
                            meter_assignments.c.valid_to > _local_midnight(first, zone),
                        ),
                    )
                    .distinct()
                )
                .scalars()
                .all()
            )
            quotes = []
            for meter_id in sorted(str(m) for m in meter_ids):
                found = quote_meter(conn, meter_id, first, last)
                if found is None:
                    problems.append(f"account {account.account_no} meter {meter_id}: not frozen for {first}..{last}")
                else:
                    quotes.append(found)
            if not quotes:
                continue
            bill_id = _new_bill(conn, account, "postpaid", first, last, actor, now)
            for meter_quote in quotes:
                _quote_lines(conn, bill_id, meter_quote)
            bill_no = _bill_no(account, "postpaid", first)
            record_audit(conn, actor, "draft_bill", f"bill:{bill_no}", f"post-paid {first}..{last}", {}, now)
            made.append(bill_no)
    return DraftResult(tuple(made), tuple(problems))


def _quote_lines(conn: Connection, bill_id: int, meter_quote: MeterQuote) -> None:
    """Bill lines for one meter: energy per band (or per tier / flat line) and the standing charges."""
    sums: dict[tuple[str, str, int, int], list[int]] = {}
    for _, outcome in meter_quote.outcomes:
        if not isinstance(outcome, Rated):
            continue
        for line in outcome.charge.lines:
            band = "" if line.band is None else line.band.name.lower()
            tier = -1 if line.tier is None else line.tier
            totals = sums.setdefault((line.component, band, tier, line.price_micros), [0, 0])
            totals[0] += line.quantity
            totals[1] += line.amount_micros
    for (component, band, tier, price), (quantity, amount) in sorted(sums.items()):
        if amount == 0 and quantity == 0:
            continue
        label = " ".join(part for part in (component, band, f"tier {tier + 1}" if tier >= 0 else "") if part)
        description = f"meter {meter_quote.meter_id} {label} {quantity / 1000:.2f} kWh x {format_money(price)}/kWh"
        detail = {
            "meter": meter_quote.meter_id,
            "component": component,
            "band": band,
            "tier": tier,
            "price_micros": price,
        }
        _add_line(conn, bill_id, "energy", description, quantity, amount, posted=True, detail=detail)
    for standing in meter_quote.standing_charges:
        description = f"meter {meter_quote.meter_id} {standing.name} ({standing.days} days)"
        _add_line(conn, bill_id, "standing", description, None, standing.amount_micros, posted=True)


# --- apportionment -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleVersion:
    master_meter_id: str
    method: Method
    participants: tuple[tuple[int, int], ...]
    """(account id, parts): the parts matter for the ratio method only."""
    source: Source = Source.TOTAL
    sub_meters: tuple[str, ...] = ()
    price_micros_per_kwh: int | None = None
    """None: the master meter's own average price over the month (its frozen cost / its energy)."""
    collection: str = "deduct"


def _check_version(conn: Connection, site_id: int, version: RuleVersion) -> Rejected | None:
    known = set(
        conn.execute(
            select(meters.c.id).where(meters.c.id.in_([version.master_meter_id, *version.sub_meters]))
        ).scalars()
    )
    for meter_id in (version.master_meter_id, *version.sub_meters):
        if meter_id not in known:
            return Rejected("meter", f"no meter {meter_id!r}")
    if version.master_meter_id in version.sub_meters:
        return Rejected("sub_meters", "the master meter cannot be its own sub-meter")
    if version.source is Source.REMAINDER and not version.sub_meters:
        return Rejected("sub_meters", "a remainder rule needs at least one sub-meter")
    if not version.participants:
        return Rejected("participants", "at least one account shares the cost")
    ids = [account for account, _ in version.participants]
    if len(set(ids)) != len(ids):
        return Rejected("participants", "an account takes part once")
    if any(parts < 0 for _, parts in version.participants):
        return Rejected("participants", "parts must not be negative")
    if version.method is Method.RATIO and sum(parts for _, parts in version.participants) == 0:
        return Rejected("participants", "the ratio method needs parts above zero")
    found = set(
        conn.execute(select(accounts.c.id).where(accounts.c.id.in_(ids), accounts.c.site_id == site_id)).scalars()
    )
    missing = sorted(set(ids) - {int(i) for i in found})
    if missing:
        return Rejected("participants", f"accounts {missing} are not accounts of site {site_id}")
    if version.price_micros_per_kwh is not None and not 0 <= version.price_micros_per_kwh <= MAX_RATE_MICROS:
        return Rejected("price_micros_per_kwh", f"must be 0..{MAX_RATE_MICROS}")
    if version.collection not in ("deduct", "bill"):
        return Rejected("collection", f"must be deduct or bill, got {version.collection!r}")
    return None


def create_rule(
    conn: Connection,
    site_id: int,
    code: str,
    name: str,
    version: RuleVersion,
    valid_from: dt.date,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> int | Rejected:
    """A new apportionment rule with its first version (audited)."""
    if not code or len(code) > MAX_CODE_CHARS:
        return Rejected("code", f"must be 1..{MAX_CODE_CHARS} characters")
    if conn.execute(select(sites.c.id).where(sites.c.id == site_id)).first() is None:
        return Rejected("site", f"no site {site_id}")
    problem = _check_version(conn, site_id, version)
    if problem is not None:
        return problem
    try:
        with conn.begin_nested():
            rule_key = conn.execute(
                insert(apportion_rules).values(
                    site_id=site_id, code=code, name=name.strip()[:120] or code, created_at=now
                )
            ).inserted_primary_key
    except IntegrityError:
        return Rejected("code", f"rule {code!r} exists already at site {site_id}")
    assert rule_key is not None
    rule_id = int(rule_key[0])
    _insert_version(conn, rule_id, 1, version, valid_from, actor, reason, now)
    return rule_id


def new_rule_version(
    conn: Connection,
    rule_id: int,
    version: RuleVersion,
    valid_from: dt.date,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> int | Rejected:
    """A new version of a rule from ``valid_from`` (later than the latest version's); returns its number."""
    rule = conn.execute(select(apportion_rules).where(apportion_rules.c.id == rule_id)).first()
    if rule is None:
        return Rejected("rule", f"no rule {rule_id}")
    problem = _check_version(conn, int(rule.site_id), version)
    if problem is not None:
        return problem
    latest = conn.execute(
        select(apportion_rule_versions.c.version, apportion_rule_versions.c.valid_from)
        .where(apportion_rule_versions.c.rule_id == rule_id)
        .order_by(apportion_rule_versions.c.version.desc())
        .limit(1)
    ).first()
    assert latest is not None
    if valid_from <= latest.valid_from:
        return Rejected("valid_from", f"must be after version {latest.version}'s {latest.valid_from.isoformat()}")
    number = int(latest.version) + 1
    _insert_version(conn, rule_id, number, version, valid_from, actor, reason, now)
    return number


def _insert_version(
    conn: Connection,
    rule_id: int,
    number: int,
    version: RuleVersion,
    valid_from: dt.date,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> None:
    conn.execute(
        insert(apportion_rule_versions).values(
            rule_id=rule_id,
            version=number,
            valid_from=valid_from,
            master_meter_id=version.master_meter_id,
            source=version.source.value,
            sub_meters=json.dumps(list(version.sub_meters)),
            method=version.method.value,
            participants=json.dumps([list(p) for p in version.participants]),
            price_micros_per_kwh=version.price_micros_per_kwh,
            collection=version.collection,
            created_at=now,
            created_by=actor,
            reason=reason,
        )
    )
    detail = {"version": number, "valid_from": valid_from.isoformat(), "method": version.method.value}
    record_audit(conn, actor, "apportion_rule", f"apportion_rule:{rule_id}", reason, detail, now)


def _version_for(conn: Connection, rule_id: int, month: dt.date) -> tuple[int, RuleVersion] | None:
    row = conn.execute(
        select(apportion_rule_versions)
        .where(apportion_rule_versions.c.rule_id == rule_id, apportion_rule_versions.c.valid_from <= month)
        .order_by(apportion_rule_versions.c.valid_from.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return int(row.version), RuleVersion(
        str(row.master_meter_id),
        Method(row.method),
        tuple((int(a), int(p)) for a, p in json.loads(row.participants)),
        Source(row.source),
        tuple(json.loads(row.sub_meters)),
        None if row.price_micros_per_kwh is None else int(row.price_micros_per_kwh),
        str(row.collection),
    )


def _month_usage(
    conn: Connection, meter_ids: Sequence[str], first: dt.date, last: dt.date
) -> dict[str, tuple[int, int, int]]:
    """meter -> (energy Wh, cost micros, days frozen) over [first, last]."""
    if not meter_ids:
        return {}
    rows = conn.execute(
        select(
            daily_freezes.c.meter_id,
            func.sum(daily_freezes.c.energy_wh),
            func.sum(daily_freezes.c.cost_micros),
            func.count(),
        )
        .where(daily_freezes.c.meter_id.in_(list(meter_ids)), daily_freezes.c.day >= first, daily_freezes.c.day <= last)
        .group_by(daily_freezes.c.meter_id)
    ).all()
    return {str(m): (int(e or 0), int(c or 0), int(n)) for m, e, c, n in rows}


@dataclass(frozen=True, slots=True)
class ApportionResult:
    run_id: int
    version: int
    energy_wh: int
    amount_micros: int
    shares: tuple[tuple[int, int, int, int], ...]
    """(account id, weight, energy Wh, amount micros)."""


def run_apportionment(
    engine: Engine, rule_id: int, month: dt.date, *, actor: str, now: dt.datetime
) -> ApportionResult | Rejected:
    """Compute and collect a rule's month once (``month`` is any day of it); a second call returns the first
    result."""
    first = month.replace(day=1)
    last = period_of(Frequency.MONTHLY, first).last
    with engine.begin() as conn:
        rule = conn.execute(select(apportion_rules).where(apportion_rules.c.id == rule_id)).first()
        if rule is None:
            return Rejected("rule", f"no rule {rule_id}")
        done = conn.execute(
            select(apportion_runs).where(apportion_runs.c.rule_id == rule_id, apportion_runs.c.month == first)
        ).first()
        if done is not None:
            return _result(conn, done)
        zone = _site_zone(conn, int(rule.site_id))
        assert zone is not None
        if _local_date(now, zone) <= last:
            return Rejected("month", f"{first:%Y-%m} has not ended yet at the site")
        found = _version_for(conn, rule_id, first)
        if found is None:
            return Rejected("month", f"rule {rule.code} has no version valid on {first}")
        number, version = found
        usage = _month_usage(conn, [version.master_meter_id, *version.sub_meters], first, last)
        master = usage.get(version.master_meter_id)
        if master is None or master[2] < last.day:
            return Rejected(
                "month", f"master meter {version.master_meter_id} is not frozen for every day of {first:%Y-%m}"
            )
        sub_wh = [usage.get(m, (0, 0, 0))[0] for m in version.sub_meters]
        energy = shared_energy(version.source, master[0], sub_wh)
        if version.price_micros_per_kwh is not None:
            amount = round_half_up(energy * version.price_micros_per_kwh, 1_000)
        else:
            amount = cost_of_share(master[1], master[0], energy)
        weights = _weights(conn, version, first, last, zone)
        result = apportion(energy, amount, weights)
        run_key = conn.execute(
            insert(apportion_runs).values(
                rule_id=rule_id,
                version=number,
                month=first,
                master_wh=master[0],
                sub_meters_wh=sum(sub_wh),
                energy_wh=energy,
                amount_micros=amount,
                weight_total=result.weight_total,
                created_at=now,
                created_by=actor,
            )
        ).inserted_primary_key
        assert run_key is not None
        run_id = int(run_key[0])
        wallets: list[int] = []
        for share in result.shares:
            account = _account(conn, share.account_id)
            entry_key = bill_id = None
            description = (
                f"{rule.name} {first:%Y-%m}: {share.weight}/{result.weight_total} of "
                f"{energy / 1000:.2f} kWh = {format_money(share.amount_micros)}"
            )
            if share.amount_micros > 0 and version.collection == "deduct":
                entry_key = f"apportion:{rule_id}:{first:%Y-%m}:{share.account_id}"
                revenue = revenue_code(f"apportionment:{rule.code}")
                at = _local_midnight(last + dt.timedelta(days=1), zone)
                _deduct(
                    conn,
                    entry_key,
                    EntryKind.DEDUCTION,
                    account.wallet,
                    revenue,
                    share.amount_micros,
                    at,
                    description,
                    now,
                )
                wallets.append(account.wallet_id)
            elif share.amount_micros > 0:
                bill_id = _charges_bill(conn, account, Period(f"{first:%Y-%m}", first, last, last), now)
                detail = {"rule": rule.code, "weight": share.weight, "weight_total": result.weight_total}
                _add_line(
                    conn, bill_id, "apportionment", description, share.energy_wh, share.amount_micros,
                    posted=False, revenue=revenue_code(f"apportionment:{rule.code}"), detail=detail,
                )  # fmt: skip
            conn.execute(
                insert(apportion_shares).values(
                    run_id=run_id,
                    account_id=share.account_id,
                    weight=share.weight,
                    energy_wh=share.energy_wh,
                    amount_micros=share.amount_micros,
                    entry_key=entry_key,
                    bill_id=bill_id,
                )
            )
        if wallets:
            prepaid.evaluate(conn, sorted(set(wallets)), now)
        record_audit(
            conn, actor, "apportion", f"apportion_rule:{rule_id}", f"{first:%Y-%m}",
            {"energy_wh": energy, "amount_micros": amount, "version": number}, now,
        )  # fmt: skip
        done = conn.execute(select(apportion_runs).where(apportion_runs.c.id == run_id)).first()
        return _result(conn, done)


def _weights(
    conn: Connection, version: RuleVersion, first: dt.date, last: dt.date, zone: ZoneInfo
) -> list[tuple[int, int]]:
    ids = [account for account, _ in version.participants]
    if version.method is Method.RATIO:
        return list(version.participants)
    start, end = _local_midnight(first, zone), _local_midnight(last + dt.timedelta(days=1), zone)
    ma = meter_assignments.c
    held = conn.execute(
        select(ma.account_id, ma.room_id, ma.meter_id).where(
            ma.account_id.in_(ids), ma.valid_from < end, or_(ma.valid_to.is_(None), ma.valid_to > start)
        )
    ).all()
    if version.method is Method.AREA:
        rooms_of: dict[int, set[int]] = {}
        for account_id, room_id, _ in held:
            rooms_of.setdefault(int(account_id), set()).add(int(room_id))
        all_rooms = sorted({r for found in rooms_of.values() for r in found})
        areas = dict(conn.execute(select(rooms.c.id, rooms.c.area_centi_m2).where(rooms.c.id.in_(all_rooms))).all())
        return [(a, sum(int(areas[r]) for r in rooms_of.get(a, set()))) for a in ids]
    meters_of: dict[int, set[str]] = {}
    for account_id, _, meter_id in held:
        meters_of.setdefault(int(account_id), set()).add(str(meter_id))
    usage = _month_usage(conn, sorted({m for found in meters_of.values() for m in found}), first, last)
    return [(a, sum(usage.get(m, (0, 0, 0))[0] for m in meters_of.get(a, set()))) for a in ids]


def _result(conn: Connection, run: Any) -> ApportionResult:
    shares = conn.execute(
        select(
            apportion_shares.c.account_id,
            apportion_shares.c.weight,
            apportion_shares.c.energy_wh,
            apportion_shares.c.amount_micros,
        )
        .where(apportion_shares.c.run_id == run.id)
        .order_by(apportion_shares.c.account_id)
    ).all()
    return ApportionResult(
        int(run.id),
        int(run.version),
        int(run.energy_wh),
        int(run.amount_micros),
        tuple((int(a), int(w), int(e), int(m)) for a, w, e, m in shares),
    )


def account_shares(conn: Connection, account_id: int, limit: int = 120) -> list[dict[str, Any]]:
    """What a tenant sees: each month's share with how it was computed."""
    rows = conn.execute(
        select(
            apportion_runs.c.month,
            apportion_rules.c.name,
            apportion_rule_versions.c.method,
            apportion_rule_versions.c.source,
            apportion_runs.c.master_wh,
            apportion_runs.c.sub_meters_wh,
            apportion_runs.c.energy_wh.label("shared_wh"),
            apportion_runs.c.amount_micros.label("shared_micros"),
            apportion_runs.c.weight_total,
            apportion_shares.c.weight,
            apportion_shares.c.energy_wh,
            apportion_shares.c.amount_micros,
        )
        .join(apportion_runs, apportion_runs.c.id == apportion_shares.c.run_id)
        .join(apportion_rules, apportion_rules.c.id == apportion_runs.c.rule_id)
        .join(
            apportion_rule_versions,
            and_(
                apportion_rule_versions.c.rule_id == apportion_runs.c.rule_id,
                apportion_rule_versions.c.version == apportion_runs.c.version,
            ),
        )
        .where(apportion_shares.c.account_id == account_id)
        .order_by(apportion_runs.c.month.desc())
        .limit(limit)
    ).mappings()
    return [dict(row) for row in rows]


# --- Excel -------------------------------------------------------------------------------------------------

HEADERS = {
    "en": ("bill no", "account", "kind", "period from", "period to", "state", "amount", "due", "order"),
    "zh-CN": ("账单号", "户号", "类型", "起始日", "截止日", "状态", "金额", "到期日", "订单号"),
}
LINE_HEADERS = {
    "en": ("bill no", "line", "kind", "description", "kWh", "amount", "in ledger"),
    "zh-CN": ("账单号", "行", "类型", "说明", "电量(kWh)", "金额", "已入账"),
}


def export_bills_xlsx(found: Sequence[Bill], path: Any, language: str = "zh-CN", title: str = "bills") -> None:
    """Bills (a month's bills or the arrears list) as an Excel workbook: one sheet of bills with a total row, one
    of their lines. Amounts are numbers with two decimals (the display rounding, half up); kWh three."""
    from openpyxl import Workbook

    headers, line_headers = HEADERS[language], LINE_HEADERS[language]
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title[:31]
    sheet.append(list(headers))
    for bill in found:
        sheet.append(
            [
                bill.bill_no,
                bill.account_no,
                bill.kind,
                bill.period_first,
                bill.period_last,
                bill.state,
                bill.amount_fen / 100,
                bill.due_on,
                bill.order_no or "",
            ]
        )
        sheet.cell(sheet.max_row, 7).number_format = "0.00"
    sheet.append(["total" if language == "en" else "合计", "", "", "", "", "", sum(b.amount_fen for b in found) / 100])
    sheet.cell(sheet.max_row, 7).number_format = "0.00"
    lines = book.create_sheet("lines" if language == "en" else "明细")
    lines.append(list(line_headers))
    for bill in found:
        for line in bill.lines:
            kwh = None if line.quantity_wh is None else line.quantity_wh / 1000
            lines.append(
                [
                    bill.bill_no,
                    line.line_no,
                    line.kind,
                    line.description,
                    kwh,
                    line.amount_micros / 1_000_000,
                    line.posted,
                ]
            )
            lines.cell(lines.max_row, 6).number_format = "0.00"
    book.save(path)
