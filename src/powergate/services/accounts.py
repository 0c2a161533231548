"""Accounts and places: organisations, sites, buildings, floors, rooms; staging, opening and closing accounts;
attaching and moving meters; a site's payment policy.

Every function but ``close_account`` works inside the caller's transaction (``conn``), so a use case and its
audit record commit together; ``close_account`` takes the engine because its refund runs its own transaction.
Operating errors (an unknown id, an account in the wrong state, a duplicate name) come back as ``Rejected``
values naming the field; nothing is written in that case. Programmer errors are assertions.

Invariants:
- An account's wallet (``wallet:<org>/<account no>``) exists from the moment the account is staged, because a
  pre-staged account's meters are installed (and need a wallet) before it opens. Opening changes the state only.
- State moves only forward: pre_staged -> open -> closed (or pre_staged -> closed). Each transition is a
  conditional UPDATE, so two concurrent operators cannot both open or both close an account.
- A meter has at most one open assignment (the database's partial unique index keeps it under races); a move
  closes the old one and opens the new one at the same instant, keeping the history, and points the meter's
  ``wallet_account_id`` at the new tenant's wallet so later readings are charged to them.
- Closing settles the wallet to exactly zero: the sub-minor remainder (less than 0.01) is written off to
  ``revenue:rounding`` and the rest, whole minor units, is refunded through the ``refund`` callable (refund
  number ``close-<account id>``, so a retried close never refunds twice). A wallet in debt is not closed: the
  debt is collected first.
- Every money change, state change and meter move writes an audit record of who and why.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, Connection, Engine, Insert, Row, Table, insert, select, update

from powergate.domain.ledger import EntryKind, Posting, make_entry, revenue_code
from powergate.domain.money import currency as currency_of
from powergate.domain.money import format_money
from powergate.domain.structure import (
    AccountState,
    CalendarKind,
    FieldError,
    PaymentChannel,
    PaymentPolicy,
    RoomUse,
    account_wallet,
    parse_calendar_overrides,
    parse_code,
    parse_email,
    parse_name,
    parse_phone,
)
from powergate.store import ledger as ledger_store
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, meters, readings
from powergate.store.tables_structure import (
    accounts,
    buildings,
    floors,
    meter_assignments,
    organisations,
    rooms,
    site_payment_channels,
    sites,
)

MAX_HOARDING_LIMIT_MICROS = 10**15
"""One billion yuan: a limit beyond it is a typo."""
ROUNDING_ACCOUNT = revenue_code("rounding")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A use case refused; ``field`` names the input at fault, ``message`` says why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class AccountView:
    id: int
    organisation_id: int
    organisation_code: str
    site_id: int
    account_no: str
    name: str
    phone: str | None
    email: str | None
    state: AccountState
    wallet: str
    wallet_account_id: int


@dataclass(frozen=True, slots=True)
class SettlementRefund:
    """What ``close_account`` asks the refund callable to pay out and post to the ledger."""

    key: str
    """Idempotency key of the ledger refund entry."""
    account_id: int
    wallet: str
    amount_micros: int
    actor: str
    reason: str
    at: dt.datetime


class RefundFn(Protocol):
    """Pays ``request.amount_micros`` back to the tenant and posts the ledger refund, in its own transaction.

    ``payments_cash_refund`` adapts ``powergate.services.payments.refund``; whatever it returns is ignored:
    ``close_account`` reads the wallet afterwards to know whether it was paid.
    """

    def __call__(self, request: SettlementRefund) -> object: ...


def payments_cash_refund(engine: Engine, channels: Any) -> RefundFn:
    """The settlement refund through the payments service, paid in cash at the management office."""
    from powergate.domain.money import micros_to_minor
    from powergate.services import payments

    def pay(request: SettlementRefund) -> object:
        refund_request = payments.RefundRequest(
            refund_no=request.key,
            wallet=request.wallet,
            amount_fen=micros_to_minor(request.amount_micros),
            destination=payments.Destination.CASH,
            reason=request.reason,
            operator=request.actor,
        )
        return payments.refund(engine, channels, refund_request, request.at)

    return pay


@dataclass(frozen=True, slots=True)
class Closed:
    account_id: int
    final_readings_wh: dict[str, int | None]
    """meter id -> register total of its last stored reading (``None``: the meter never reported)."""
    balance_micros: int
    """The wallet's balance when the settlement started."""
    refunded_micros: int
    written_off_micros: int
    left_micros: int
    """Still in the wallet: 0 when settled; otherwise the refund failed or is pending and closing again resumes."""

    @property
    def settled(self) -> bool:
        return self.left_micros == 0


# --- organisations and places ----------------------------------------------------------------------------


def create_organisation(conn: Connection, code: str, name: str, *, actor: str, now: dt.datetime) -> int | Rejected:
    try:
        code = parse_code(code, "organisation")
        name = parse_name(name, "name", 120)
    except FieldError as error:
        return Rejected(error.field, error.message)
    if conn.execute(select(organisations.c.id).where(organisations.c.code == code)).first():
        return Rejected("organisation", f"{code!r} exists already")
    new_id = _insert(conn, insert(organisations).values(code=code, name=name, created_at=now))
    record_audit(conn, actor, "create_organisation", f"organisation:{code}", "new organisation", {"name": name}, now)
    return new_id


def create_site(
    conn: Connection,
    organisation_id: int,
    name: str,
    *,
    timezone: str,
    currency: str,
    channels: Iterable[PaymentChannel],
    min_purchase_micros: int = 0,
    hoarding_limit_micros: int | None = None,
    calendar: CalendarKind = CalendarKind.CHINA,
    calendar_overrides: Mapping[str, str] | None = None,
    actor: str,
    now: dt.datetime,
) -> int | Rejected:
    """A site with its time zone, currency, calendar and payment policy (audited: it limits payments)."""
    try:
        name = parse_name(name, "name")
        parse_calendar_overrides(dict(calendar_overrides or {}))
        currency_of(currency)
    except FieldError as error:
        return Rejected(error.field, error.message)
    except ValueError as error:
        return Rejected("currency", str(error))
    problem = _timezone_problem(timezone) or _limits_problem(min_purchase_micros, hoarding_limit_micros)
    if problem is not None:
        return problem
    if _organisation_code(conn, organisation_id) is None:
        return Rejected("organisation", f"no organisation {organisation_id}")
    taken = select(sites.c.id).where(sites.c.organisation_id == organisation_id, sites.c.name == name)
    if conn.execute(taken).first():
        return Rejected("name", f"the organisation has a site {name!r} already")
    site_id = _insert(
        conn,
        insert(sites).values(
            organisation_id=organisation_id,
            name=name,
            timezone=timezone,
            currency=currency.upper(),
            calendar=calendar.value,
            calendar_overrides=json.dumps(dict(calendar_overrides or {}), sort_keys=True),
            min_purchase_micros=min_purchase_micros,
            hoarding_limit_micros=hoarding_limit_micros,
            created_at=now,
        ),
    )
    _write_channels(conn, site_id, frozenset(channels))
    policy = site_payment_policy(conn, site_id)
    assert policy is not None
    record_audit(conn, actor, "create_site", f"site:{site_id}", "new site", _policy_detail(policy), now)
    return site_id


def set_site_payment_policy(
    conn: Connection,
    site_id: int,
    *,
    channels: Iterable[PaymentChannel],
    min_purchase_micros: int,
    hoarding_limit_micros: int | None,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> PaymentPolicy | Rejected:
    """Change what a site accepts (channels, minimum purchase, hoarding limit); audited with old and new."""
    before = site_payment_policy(conn, site_id)
    if before is None:
        return Rejected("site", f"no site {site_id}")
    problem = _limits_problem(min_purchase_micros, hoarding_limit_micros)
    if problem is not None:
        return problem
    conn.execute(
        update(sites)
        .where(sites.c.id == site_id)
        .values(min_purchase_micros=min_purchase_micros, hoarding_limit_micros=hoarding_limit_micros)
    )
    conn.execute(site_payment_channels.delete().where(site_payment_channels.c.site_id == site_id))
    _write_channels(conn, site_id, frozenset(channels))
    after = site_payment_policy(conn, site_id)
    assert after is not None
    detail = {"before": _policy_detail(before), "after": _policy_detail(after)}
    record_audit(conn, actor, "set_payment_policy", f"site:{site_id}", reason, detail, now)
    return after


def create_building(conn: Connection, site_id: int, name: str) -> int | Rejected:
    checked = _place_name(conn, buildings, "site_id", site_id, sites, "name", name)
    if isinstance(checked, Rejected):
        return checked
    return _insert(conn, insert(buildings).values(site_id=site_id, name=checked))


def create_floor(conn: Connection, building_id: int, name: str) -> int | Rejected:
    checked = _place_name(conn, floors, "building_id", building_id, buildings, "name", name)
    if isinstance(checked, Rejected):
        return checked
    return _insert(conn, insert(floors).values(building_id=building_id, name=checked))


def create_room(conn: Connection, floor_id: int, number: str, area_centi_m2: int, use: RoomUse) -> int | Rejected:
    """A room on a floor; ``area_centi_m2`` in 0.01 m² (``domain.structure.parse_area`` reads operator text)."""
    assert area_centi_m2 >= 0, "area is parsed before it gets here"
    checked = _place_name(conn, rooms, "floor_id", floor_id, floors, "number", number)
    if isinstance(checked, Rejected):
        return checked
    values = {"floor_id": floor_id, "number": checked, "area_centi_m2": area_centi_m2, "use": use.value}
    return _insert(conn, insert(rooms).values(**values))


def _place_name(
    conn: Connection, table: Table, parent_column: str, parent_id: int, parent: Table, name_column: str, name: str
) -> str | Rejected:
    """The checked name of a new building, floor or room: the parent exists and the name is free in it."""
    try:
        name = parse_name(name, name_column)
    except FieldError as error:
        return Rejected(error.field, error.message)
    if conn.execute(select(parent.c.id).where(parent.c.id == parent_id)).first() is None:
        return Rejected(parent_column, f"no {parent.name.removesuffix('s')} {parent_id}")
    taken = select(table.c.id).where(table.c[parent_column] == parent_id, table.c[name_column] == name)
    if conn.execute(taken).first():
        return Rejected(name_column, f"{name!r} exists already in {parent.name.removesuffix('s')} {parent_id}")
    return name


# --- accounts --------------------------------------------------------------------------------------------


def stage_account(
    conn: Connection,
    site_id: int,
    account_no: str,
    name: str,
    *,
    phone: str | None = None,
    email: str | None = None,
    actor: str,
    now: dt.datetime,
) -> int | Rejected:
    """A pre-staged account (预开户) with its wallet, ready to be opened in one click."""
    try:
        account_no = parse_code(account_no, "account_no")
        name = parse_name(name, "name", 120)
        phone = parse_phone(phone)
        email = parse_email(email)
    except FieldError as error:
        return Rejected(error.field, error.message)
    site = conn.execute(select(sites.c.organisation_id, sites.c.currency).where(sites.c.id == site_id)).first()
    if site is None:
        return Rejected("site", f"no site {site_id}")
    organisation_code = _organisation_code(conn, int(site.organisation_id))
    assert organisation_code is not None
    taken = select(accounts.c.id).where(
        accounts.c.organisation_id == site.organisation_id, accounts.c.account_no == account_no
    )
    if conn.execute(taken).first():
        return Rejected("account_no", f"{account_no!r} exists already in organisation {organisation_code}")
    wallet = account_wallet(organisation_code, account_no)
    wallet_id = ledger_store.ensure_account(conn, wallet, now, currency=site.currency)
    account_id = _insert(
        conn,
        insert(accounts).values(
            organisation_id=site.organisation_id,
            site_id=site_id,
            account_no=account_no,
            name=name,
            phone=phone,
            email=email,
            state=AccountState.PRE_STAGED.value,
            wallet_account_id=wallet_id,
            created_at=now,
        ),
    )
    record_audit(conn, actor, "stage_account", _subject(account_id), "new account", {"wallet": wallet}, now)
    return account_id


def open_account(
    conn: Connection, account_id: int, *, actor: str, reason: str, now: dt.datetime
) -> AccountView | Rejected:
    """Open a pre-staged account in one click: its wallet exists; from now on it may be recharged."""
    account = account_view(conn, account_id)
    if account is None:
        return Rejected("account", f"no account {account_id}")
    # Idempotent: the wallet was created at staging; this repairs nothing but costs one lookup.
    ledger_store.ensure_account(conn, account.wallet, now)
    opened = conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.state == AccountState.PRE_STAGED.value)
        .values(state=AccountState.OPEN.value, opened_at=now)
    )
    if opened.rowcount != 1:
        return Rejected("account", f"account {account.account_no} is {account.state.value}, not pre_staged")
    record_audit(conn, actor, "open_account", _subject(account_id), reason, {"wallet": account.wallet}, now)
    view = account_view(conn, account_id)
    assert view is not None
    return view


def close_account(
    engine: Engine, account_id: int, *, refund: RefundFn, actor: str, reason: str, now: dt.datetime
) -> Closed | Rejected:
    """Close an account: final readings, meters detached, settlement to zero and refund of what remains.

    Three steps, each its own transaction, because the refund (``powergate.services.payments.refund``) runs
    its own and may call a provider: (1) the account closes and its meters are detached with their final
    readings -- from then on it takes no recharge; (2) the sub-minor-unit remainder is written off; (3) the rest
    is refunded. Calling it again for a closed account whose wallet still holds credit (a refund that failed)
    resumes at step 2; every step is idempotent by its key.
    """
    with engine.begin() as conn:
        account = account_view(conn, account_id)
        if account is None:
            return Rejected("account", f"no account {account_id}")
        balance_micros = ledger_store.balance(conn, account.wallet).balance_micros
        if account.state is AccountState.CLOSED and balance_micros == 0:
            return Rejected("account", f"account {account.account_no} is closed and settled already")
        if balance_micros < 0:
            owed = format_money(-balance_micros, currency_of(_account_currency(conn, account)))
            return Rejected("balance", f"the wallet of {account.account_no} owes {owed}; collect it before closing")
        finals: dict[str, int | None] = {}
        if account.state is not AccountState.CLOSED:
            finals = _close_and_detach(conn, account, actor, reason, now)
        step = currency_of(_account_currency(conn, account)).micros_per_minor
        written_off = _write_off_remainder(conn, account, step, now)
        refundable = ledger_store.balance(conn, account.wallet).balance_micros
    if refundable > 0:
        refund(SettlementRefund(f"close-{account.id}", account.id, account.wallet, refundable, actor, reason, now))
    with engine.begin() as conn:
        left_micros = ledger_store.balance(conn, account.wallet).balance_micros
        refunded = refundable - left_micros
        detail = {"refunded_micros": refunded, "written_off_micros": written_off, "left_micros": left_micros}
        record_audit(conn, actor, "settle_account", _subject(account_id), reason, detail, now)
    return Closed(account_id, finals, balance_micros, refunded, written_off, left_micros)


def _close_and_detach(
    conn: Connection, account: AccountView, actor: str, reason: str, now: dt.datetime
) -> dict[str, int | None]:
    closed = conn.execute(
        update(accounts)
        .where(accounts.c.id == account.id, accounts.c.state != AccountState.CLOSED.value)
        .values(state=AccountState.CLOSED.value, closed_at=now)
    )
    assert closed.rowcount == 1, f"account {account.id} closed concurrently"
    finals = _detach_all(conn, account.id, now)
    balance_micros = ledger_store.balance(conn, account.wallet).balance_micros
    detail = {"final_readings_wh": finals, "balance_micros": balance_micros}
    record_audit(conn, actor, "close_account", _subject(account.id), reason, detail, now)
    return finals


def _write_off_remainder(conn: Connection, account: AccountView, step_micros: int, now: dt.datetime) -> int:
    """Post the balance's part below the minor unit (< 0.01) to ``revenue:rounding``; returns it in micros.

    Refunds are paid in minor units, so that part cannot be paid out; writing it off leaves the wallet at an
    exact multiple of the minor unit for the refund to take to zero.
    """
    remainder = ledger_store.balance(conn, account.wallet).balance_micros % step_micros
    if remainder == 0:
        return 0
    entry = make_entry(
        f"close:{account.id}:rounding:{remainder}",
        EntryKind.ADJUSTMENT,
        now,
        (Posting(account.wallet, -remainder), Posting(ROUNDING_ACCOUNT, remainder)),
        "sub-minor-unit remainder written off at account close",
    )
    ledger_store.post(conn, entry, now)
    return remainder


# --- meters ----------------------------------------------------------------------------------------------


def attach_meter(
    conn: Connection,
    meter_id: str,
    room_id: int,
    account_id: int,
    *,
    tariff_id: str | None = None,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> int | Rejected:
    """Install a meter in a room for an account; returns the assignment id.

    A meter not yet known is created (``tariff_id`` required) on the account's wallet in the site's time zone;
    a known meter must be unassigned (a meter with a tenant moves with ``move_meter``).
    """
    account = account_view(conn, account_id)
    if account is None:
        return Rejected("account", f"no account {account_id}")
    if account.state is AccountState.CLOSED:
        return Rejected("account", f"account {account.account_no} is closed")
    room_site = _room_site(conn, room_id)
    if room_site is None:
        return Rejected("room", f"no room {room_id}")
    if room_site != account.site_id:
        return Rejected("room", f"room {room_id} is not at the account's site")
    if _open_assignment(conn, meter_id) is not None:
        return Rejected("meter", f"meter {meter_id} is attached already; use move_meter")
    exists = conn.execute(select(meters.c.id).where(meters.c.id == meter_id)).first() is not None
    if not exists:
        problem = _create_meter(conn, meter_id, tariff_id, account, now)
        if problem is not None:
            return problem
    else:
        conn.execute(update(meters).where(meters.c.id == meter_id).values(wallet_account_id=account.wallet_account_id))
    start_wh = last_total_wh(conn, meter_id)
    assignment_id = _insert(
        conn,
        insert(meter_assignments).values(
            meter_id=meter_id, room_id=room_id, account_id=account_id, valid_from=now, start_total_wh=start_wh
        ),
    )
    detail = {"room_id": room_id, "account_id": account_id, "start_total_wh": start_wh}
    record_audit(conn, actor, "attach_meter", f"meter:{meter_id}", reason, detail, now)
    return assignment_id


def move_meter(
    conn: Connection, meter_id: str, new_account_id: int, *, actor: str, reason: str, now: dt.datetime
) -> int | Rejected:
    """Hand a meter to a new tenant at ``now``: the old assignment closes, a new one opens in the same room.

    The handover reading is the last stored reading. Readings stored after the move are charged to the new
    tenant's wallet. Returns the new assignment id.
    """
    current = _open_assignment(conn, meter_id)
    if current is None:
        return Rejected("meter", f"meter {meter_id} has no tenant; use attach_meter")
    account = account_view(conn, new_account_id)
    if account is None:
        return Rejected("account", f"no account {new_account_id}")
    if account.state is AccountState.CLOSED:
        return Rejected("account", f"account {account.account_no} is closed")
    if int(current.account_id) == new_account_id:
        return Rejected("account", f"meter {meter_id} belongs to account {account.account_no} already")
    if _room_site(conn, int(current.room_id)) != account.site_id:
        return Rejected("account", f"account {account.account_no} is at another site than meter {meter_id}")
    handover_wh = last_total_wh(conn, meter_id)
    if not _end_assignment(conn, int(current.id), now, handover_wh):
        return Rejected("meter", f"meter {meter_id} was moved by someone else just now; look again")
    conn.execute(update(meters).where(meters.c.id == meter_id).values(wallet_account_id=account.wallet_account_id))
    # The partial unique index on open assignments backs this up: a second open row could never commit.
    new_id = _insert(
        conn,
        insert(meter_assignments).values(
            meter_id=meter_id,
            room_id=current.room_id,
            account_id=new_account_id,
            valid_from=now,
            start_total_wh=handover_wh,
        ),
    )
    detail = {
        "from_account_id": int(current.account_id),
        "to_account_id": new_account_id,
        "room_id": int(current.room_id),
        "handover_total_wh": handover_wh,
    }
    record_audit(conn, actor, "move_meter", f"meter:{meter_id}", reason, detail, now)
    return new_id


def set_account_tariff(
    conn: Connection, account_id: int, tariff_id: str, *, actor: str, reason: str, now: dt.datetime
) -> list[str] | Rejected:
    """Put every meter attached to the account on ``tariff_id``; returns the meter ids changed (audited).

    Readings stored from now on are rated with the new tariff (the ingest caches parsed tariffs per process).
    """
    from powergate.store.tables import tariffs

    account = account_view(conn, account_id)
    if account is None:
        return Rejected("account", f"no account {account_id}")
    if account.state is AccountState.CLOSED:
        return Rejected("account", f"account {account.account_no} is closed")
    if conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff_id)).first() is None:
        return Rejected("tariff_id", f"no tariff {tariff_id!r}")
    attached = conn.execute(
        select(meters.c.id, meters.c.tariff_id)
        .join(meter_assignments, meter_assignments.c.meter_id == meters.c.id)
        .where(meter_assignments.c.account_id == account_id, meter_assignments.c.valid_to.is_(None))
        .order_by(meters.c.id)
    ).all()
    if not attached:
        return Rejected("account", f"account {account.account_no} has no meter attached")
    before = {str(meter_id): str(old) for meter_id, old in attached}
    conn.execute(update(meters).where(meters.c.id.in_(list(before))).values(tariff_id=tariff_id))
    detail = {"tariff_id": tariff_id, "before": before}
    record_audit(conn, actor, "set_tariff", _subject(account_id), reason, detail, now)
    return sorted(before)


@dataclass(frozen=True, slots=True)
class Assignment:
    id: int
    meter_id: str
    room_id: int
    account_id: int
    valid_from: dt.datetime
    valid_to: dt.datetime | None
    start_total_wh: int | None
    end_total_wh: int | None


def meter_history(conn: Connection, meter_id: str, limit: int = 1_000) -> list[Assignment]:
    """A meter's assignments, oldest first (at most ``limit``)."""
    query = (
        select(meter_assignments)
        .where(meter_assignments.c.meter_id == meter_id)
        .order_by(meter_assignments.c.valid_from, meter_assignments.c.id)
        .limit(limit)
    )
    return [
        Assignment(
            int(r.id),
            r.meter_id,
            int(r.room_id),
            int(r.account_id),
            r.valid_from,
            r.valid_to,
            r.start_total_wh,
            r.end_total_wh,
        )
        for r in conn.execute(query)
    ]


def last_total_wh(conn: Connection, meter_id: str) -> int | None:
    """The register total of the meter's latest stored reading (by reading time), ``None`` if it has none."""
    query = (
        select(readings.c.total_wh)
        .where(readings.c.meter_id == meter_id)
        .order_by(readings.c.at.desc(), readings.c.id.desc())
        .limit(1)
    )
    value = conn.execute(query).scalar()
    return None if value is None else int(value)


# --- queries other services use ----------------------------------------------------------------------------


def account_view(conn: Connection, account_id: int) -> AccountView | None:
    return _one_account(conn, accounts.c.id == account_id)


def account_by_wallet(conn: Connection, wallet: str) -> AccountView | None:
    """The account whose wallet is the ledger account ``wallet`` (e.g. to check it is open before a recharge)."""
    return _one_account(conn, ledger_accounts.c.code == wallet)


def site_payment_policy(conn: Connection, site_id: int) -> PaymentPolicy | None:
    """The site's enabled channels, minimum purchase and hoarding limit; ``None`` if there is no such site."""
    row = conn.execute(
        select(sites.c.currency, sites.c.min_purchase_micros, sites.c.hoarding_limit_micros).where(
            sites.c.id == site_id
        )
    ).first()
    if row is None:
        return None
    names = conn.execute(select(site_payment_channels.c.channel).where(site_payment_channels.c.site_id == site_id))
    channels = frozenset(PaymentChannel(name) for (name,) in names)
    limit = None if row.hoarding_limit_micros is None else int(row.hoarding_limit_micros)
    return PaymentPolicy(site_id, str(row.currency), int(row.min_purchase_micros), limit, channels)


def policy_for_wallet(conn: Connection, wallet: str) -> PaymentPolicy | None:
    """The payment policy of the site of the account owning ``wallet``; ``None`` if no account owns it."""
    account = account_by_wallet(conn, wallet)
    return None if account is None else site_payment_policy(conn, account.site_id)


# --- helpers ---------------------------------------------------------------------------------------------


def _one_account(conn: Connection, condition: ColumnElement[bool]) -> AccountView | None:
    query = (
        select(accounts, organisations.c.code.label("organisation_code"), ledger_accounts.c.code.label("wallet"))
        .join(organisations, organisations.c.id == accounts.c.organisation_id)
        .join(ledger_accounts, ledger_accounts.c.id == accounts.c.wallet_account_id)
        .where(condition)
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    return AccountView(
        int(row.id),
        int(row.organisation_id),
        str(row.organisation_code),
        int(row.site_id),
        str(row.account_no),
        str(row.name),
        row.phone,
        row.email,
        AccountState(row.state),
        str(row.wallet),
        int(row.wallet_account_id),
    )


def _detach_all(conn: Connection, account_id: int, now: dt.datetime) -> dict[str, int | None]:
    """End every open assignment of the account at ``now`` with its final reading; meter id -> final total."""
    open_rows = conn.execute(
        select(meter_assignments.c.id, meter_assignments.c.meter_id)
        .where(meter_assignments.c.account_id == account_id, meter_assignments.c.valid_to.is_(None))
        .order_by(meter_assignments.c.meter_id)
    ).all()
    finals: dict[str, int | None] = {}
    for assignment_id, meter_id in open_rows:
        finals[str(meter_id)] = last_total_wh(conn, str(meter_id))
        ended = _end_assignment(conn, int(assignment_id), now, finals[str(meter_id)])
        assert ended, f"assignment {assignment_id} ended concurrently while its account closed"
    return finals


def _end_assignment(conn: Connection, assignment_id: int, now: dt.datetime, end_total_wh: int | None) -> bool:
    result = conn.execute(
        update(meter_assignments)
        .where(meter_assignments.c.id == assignment_id, meter_assignments.c.valid_to.is_(None))
        .values(valid_to=now, end_total_wh=end_total_wh)
    )
    return result.rowcount == 1


def _open_assignment(conn: Connection, meter_id: str) -> Row[Any] | None:
    return conn.execute(
        select(meter_assignments).where(
            meter_assignments.c.meter_id == meter_id, meter_assignments.c.valid_to.is_(None)
        )
    ).first()


def _create_meter(
    conn: Connection, meter_id: str, tariff_id: str | None, account: AccountView, now: dt.datetime
) -> Rejected | None:
    from powergate.store.tables import tariffs

    if not meter_id or len(meter_id) > 64:
        return Rejected("meter", f"meter id {meter_id!r} must be 1..64 characters")
    if tariff_id is None:
        return Rejected("tariff", f"meter {meter_id} is new: give its tariff")
    if conn.execute(select(tariffs.c.id).where(tariffs.c.id == tariff_id)).first() is None:
        return Rejected("tariff", f"no tariff {tariff_id!r}")
    timezone = conn.execute(select(sites.c.timezone).where(sites.c.id == account.site_id)).scalar_one()
    conn.execute(
        insert(meters).values(
            id=meter_id,
            wallet_account_id=account.wallet_account_id,
            tariff_id=tariff_id,
            timezone=timezone,
            created_at=now,
        )
    )
    return None


def _room_site(conn: Connection, room_id: int) -> int | None:
    value = conn.execute(
        select(buildings.c.site_id)
        .join(floors, floors.c.building_id == buildings.c.id)
        .join(rooms, rooms.c.floor_id == floors.c.id)
        .where(rooms.c.id == room_id)
    ).scalar()
    return None if value is None else int(value)


def _account_currency(conn: Connection, account: AccountView) -> str:
    return str(conn.execute(select(sites.c.currency).where(sites.c.id == account.site_id)).scalar_one())


def _organisation_code(conn: Connection, organisation_id: int) -> str | None:
    value = conn.execute(select(organisations.c.code).where(organisations.c.id == organisation_id)).scalar()
    return None if value is None else str(value)


def _write_channels(conn: Connection, site_id: int, channels: frozenset[PaymentChannel]) -> None:
    if channels:
        conn.execute(
            insert(site_payment_channels), [{"site_id": site_id, "channel": c.value} for c in sorted(channels)]
        )


def _timezone_problem(timezone: str) -> Rejected | None:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return Rejected("timezone", f"{timezone!r} is not an IANA time zone such as Asia/Shanghai")
    return None


def _limits_problem(min_purchase_micros: int, hoarding_limit_micros: int | None) -> Rejected | None:
    if min_purchase_micros < 0:
        return Rejected("min_purchase", "must not be negative")
    if hoarding_limit_micros is None:
        return None
    if not 0 < hoarding_limit_micros <= MAX_HOARDING_LIMIT_MICROS:
        return Rejected("hoarding_limit", f"must be 1..{MAX_HOARDING_LIMIT_MICROS} micros, or none")
    if hoarding_limit_micros < min_purchase_micros:
        return Rejected("hoarding_limit", "is below the minimum purchase: nothing could ever be bought")
    return None


def _policy_detail(policy: PaymentPolicy) -> dict[str, object]:
    return {
        "channels": sorted(c.value for c in policy.channels),
        "min_purchase_micros": policy.min_purchase_micros,
        "hoarding_limit_micros": policy.hoarding_limit_micros,
    }


def _subject(account_id: int) -> str:
    return f"account:{account_id}"


def _insert(conn: Connection, statement: Insert) -> int:
    result = conn.execute(statement)
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


__all__ = [
    "AccountView",
    "Assignment",
    "Closed",
    "RefundFn",
    "Rejected",
    "SettlementRefund",
    "account_by_wallet",
    "account_view",
    "attach_meter",
    "close_account",
    "create_building",
    "create_floor",
    "create_organisation",
    "create_room",
    "create_site",
    "last_total_wh",
    "meter_history",
    "move_meter",
    "open_account",
    "policy_for_wallet",
    "set_account_tariff",
    "set_site_payment_policy",
    "site_payment_policy",
    "stage_account",
]
