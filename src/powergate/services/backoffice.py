"""Read models and small use cases of the back office (console): accounts, orders, alarms, audit, tariffs.

Every function takes the caller's ``organisation_id`` and scopes its query by it: an account, order, meter,
alarm or audit record of another organisation is simply not found (the web layer answers 404, so ids do not
leak). An organisation's meters are those whose wallet belongs to one of its accounts; its tariffs are those
it owns (``tariff_owners``) and those its meters use.

Queries are set-based and bounded (``MAX_PAGE`` rows a page; a page's meters and rooms are read in one more
query, never one per row). Acknowledging an alarm is the only write here. As in the HTTP API
(``powergate.services.queries``), an acknowledgement IS its audit record (action ``ack_alarm``, subject
``alarm:<source>:<id>``: who, when and why), so the console and the API see each other's acknowledgements and no
table is needed. The alarm's row is locked while acknowledging, so one alarm is acknowledged once; a second
attempt is refused with the name of the first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
)

from powergate.services.accounts import Rejected
from powergate.services.queries import ACK_ACTION
from powergate.store.audit import MAX_REASON_CHARS, record_audit
from powergate.store.tables import ledger_accounts, meters, tariffs
from powergate.store.tables_api import tariff_owners
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
    sites,
)

MAX_PAGE = 200
MAX_ALARM_KEY_CHARS = 160
MAX_SEARCH_CHARS = 64
MAX_SUBJECT_FILTER_CHARS = 200


@dataclass(frozen=True, slots=True)
class Page:
    """A page of rows: ``total`` rows match the filters; ``offset`` of the first one."""

    rows: list[Any]
    total: int
    offset: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.rows) < self.total

    @property
    def has_previous(self) -> bool:
        return self.offset > 0


def _page_bounds(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(limit, MAX_PAGE)), max(0, offset)


def organisation_code(conn: Connection, organisation_id: int) -> str:
    value = conn.execute(select(organisations.c.code).where(organisations.c.id == organisation_id)).scalar()
    assert value is not None, f"no organisation {organisation_id}"
    return str(value)


def org_wallets(organisation_id: int) -> Select[Any]:
    """The wallet ledger-account ids of the organisation's accounts (a subquery)."""
    return select(accounts.c.wallet_account_id).where(accounts.c.organisation_id == organisation_id)


def org_meters(organisation_id: int) -> Select[Any]:
    """The meter ids of the organisation: meters on one of its accounts' wallets (a subquery)."""
    return select(meters.c.id).where(meters.c.wallet_account_id.in_(org_wallets(organisation_id)))


# --- accounts ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountFilter:
    site_id: int | None = None
    state: str | None = None
    search: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class AccountLine:
    id: int
    account_no: str
    name: str
    phone: str | None
    state: str
    site_id: int
    site: str
    balance_micros: int
    created_at: dt.datetime
    opened_at: dt.datetime | None
    closed_at: dt.datetime | None
    meters: tuple[str, ...] = ()
    rooms: tuple[str, ...] = ()


def list_accounts(conn: Connection, organisation_id: int, wanted: AccountFilter) -> Page:
    limit, offset = _page_bounds(wanted.limit, wanted.offset)
    a = accounts.c
    conditions: list[ColumnElement[bool]] = [a.organisation_id == organisation_id]
    if wanted.site_id is not None:
        conditions.append(a.site_id == wanted.site_id)
    if wanted.state:
        conditions.append(a.state == wanted.state)
    if wanted.search:
        text = wanted.search.strip()[:MAX_SEARCH_CHARS]
        placed = (
            select(meter_assignments.c.account_id)
            .join(rooms, rooms.c.id == meter_assignments.c.room_id)
            .where(
                meter_assignments.c.valid_to.is_(None),
                or_(
                    meter_assignments.c.meter_id.icontains(text, autoescape=True),
                    rooms.c.number.icontains(text, autoescape=True),
                ),
            )
        )
        conditions.append(
            or_(
                a.account_no.icontains(text, autoescape=True),
                a.name.icontains(text, autoescape=True),
                a.phone.icontains(text, autoescape=True),
                a.id.in_(placed),
            )
        )
    total = int(conn.execute(select(func.count()).select_from(accounts).where(*conditions)).scalar_one())
    query = (
        select(
            a.id,
            a.account_no,
            a.name,
            a.phone,
            a.state,
            a.site_id,
            sites.c.name.label("site"),
            ledger_accounts.c.balance_micros,
            a.created_at,
            a.opened_at,
            a.closed_at,
        )
        .join(sites, sites.c.id == a.site_id)
        .join(ledger_accounts, ledger_accounts.c.id == a.wallet_account_id)
        .where(*conditions)
        .order_by(a.account_no)
        .limit(limit)
        .offset(offset)
    )
    found = conn.execute(query).all()
    placements = _placements(conn, [int(r.id) for r in found])
    rows = [
        AccountLine(
            int(r.id),
            str(r.account_no),
            str(r.name),
            r.phone,
            str(r.state),
            int(r.site_id),
            str(r.site),
            int(r.balance_micros),
            r.created_at,
            r.opened_at,
            r.closed_at,
            tuple(m for m, _ in placements.get(int(r.id), [])),
            tuple(room for _, room in placements.get(int(r.id), [])),
        )
        for r in found
    ]
    return Page(rows, total, offset, limit)


def _placements(conn: Connection, account_ids: list[int]) -> dict[int, list[tuple[str, str]]]:
    """account id -> [(meter id, 'building/floor/room')] of its open assignments, in one query."""
    if not account_ids:
        return {}
    query = (
        select(
            meter_assignments.c.account_id,
            meter_assignments.c.meter_id,
            buildings.c.name,
            floors.c.name,
            rooms.c.number,
        )
        .join(rooms, rooms.c.id == meter_assignments.c.room_id)
        .join(floors, floors.c.id == rooms.c.floor_id)
        .join(buildings, buildings.c.id == floors.c.building_id)
        .where(meter_assignments.c.account_id.in_(account_ids), meter_assignments.c.valid_to.is_(None))
        .order_by(meter_assignments.c.meter_id)
    )
    found: dict[int, list[tuple[str, str]]] = {}
    for account_id, meter_id, building, floor, room in conn.execute(query):
        found.setdefault(int(account_id), []).append((str(meter_id), f"{building}/{floor}/{room}"))
    return found


def account_in_organisation(conn: Connection, organisation_id: int, account_id: int) -> AccountLine | None:
    a = accounts.c
    row = conn.execute(
        select(
            a.id,
            a.account_no,
            a.name,
            a.phone,
            a.state,
            a.site_id,
            sites.c.name.label("site"),
            ledger_accounts.c.balance_micros,
            a.created_at,
            a.opened_at,
            a.closed_at,
        )
        .join(sites, sites.c.id == a.site_id)
        .join(ledger_accounts, ledger_accounts.c.id == a.wallet_account_id)
        .where(a.id == account_id, a.organisation_id == organisation_id)
    ).first()
    if row is None:
        return None
    placed = _placements(conn, [account_id]).get(account_id, [])
    return AccountLine(
        int(row.id),
        str(row.account_no),
        str(row.name),
        row.phone,
        str(row.state),
        int(row.site_id),
        str(row.site),
        int(row.balance_micros),
        row.created_at,
        row.opened_at,
        row.closed_at,
        tuple(m for m, _ in placed),
        tuple(r for _, r in placed),
    )


# --- orders ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderFilter:
    since: dt.datetime
    until: dt.datetime
    channel: str | None = None
    state: str | None = None
    account_no: str | None = None
    site_id: int | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class OrderLine:
    order_no: str
    account_id: int
    account_no: str
    channel: str
    method: str
    amount_fen: int
    refunded_fen: int
    state: str
    created_at: dt.datetime
    paid_at: dt.datetime | None
    provider_txn_id: str | None
    receipt_no: str | None
    operator: str | None
    description: str = ""
    closed_reason: str | None = None


def _order_select() -> Select[Any]:
    o = orders.c
    return select(
        o.order_no,
        accounts.c.id.label("account_id"),
        accounts.c.account_no,
        o.channel,
        o.method,
        o.amount_fen,
        o.refunded_fen,
        o.state,
        o.created_at,
        o.paid_at,
        o.provider_txn_id,
        o.receipt_no,
        o.operator,
        o.description,
        o.closed_reason,
    ).join(accounts, accounts.c.wallet_account_id == o.wallet_account_id)


def _order_line(r: Any) -> OrderLine:
    return OrderLine(
        str(r.order_no),
        int(r.account_id),
        str(r.account_no),
        str(r.channel),
        str(r.method),
        int(r.amount_fen),
        int(r.refunded_fen),
        str(r.state),
        r.created_at,
        r.paid_at,
        r.provider_txn_id,
        r.receipt_no,
        r.operator,
        str(r.description or ""),
        r.closed_reason,
    )


def list_orders(conn: Connection, organisation_id: int, wanted: OrderFilter) -> Page:
    assert wanted.since.tzinfo and wanted.until.tzinfo, "order filter times must be timezone-aware"
    limit, offset = _page_bounds(wanted.limit, wanted.offset)
    o = orders.c
    conditions: list[ColumnElement[bool]] = [
        accounts.c.organisation_id == organisation_id,
        o.created_at >= wanted.since,
        o.created_at < wanted.until,
    ]
    for column, value in ((o.channel, wanted.channel), (o.state, wanted.state)):
        if value:
            conditions.append(column == value)
    if wanted.account_no:
        conditions.append(accounts.c.account_no == wanted.account_no.strip())
    if wanted.site_id is not None:
        conditions.append(accounts.c.site_id == wanted.site_id)
    joined = orders.join(accounts, accounts.c.wallet_account_id == o.wallet_account_id)
    total = int(conn.execute(select(func.count()).select_from(joined).where(*conditions)).scalar_one())
    query = _order_select().where(*conditions).order_by(o.created_at.desc(), o.id.desc()).limit(limit).offset(offset)
    return Page([_order_line(r) for r in conn.execute(query)], total, offset, limit)


@dataclass(frozen=True, slots=True)
class RefundLine:
    refund_no: str
    amount_fen: int
    destination: str
    state: str
    reason: str
    operator: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    failure: str | None


@dataclass(frozen=True, slots=True)
class NotificationLine:
    channel: str
    received_at: dt.datetime
    verdict: str
    reason: str
    notification_id: str | None


@dataclass(frozen=True, slots=True)
class OrderDetail:
    order: OrderLine
    refunds: list[RefundLine]
    notifications: list[NotificationLine]


def order_detail(conn: Connection, organisation_id: int, order_no: str) -> OrderDetail | None:
    row = conn.execute(
        _order_select().where(orders.c.order_no == order_no, accounts.c.organisation_id == organisation_id)
    ).first()
    if row is None:
        return None
    r = refunds.c
    refund_rows = conn.execute(
        select(refunds).where(r.order_no == order_no).order_by(r.created_at, r.id).limit(MAX_PAGE)
    ).all()
    n = payment_notifications.c
    notification_rows = conn.execute(
        select(payment_notifications).where(n.order_no == order_no).order_by(n.received_at, n.id).limit(MAX_PAGE)
    ).all()
    return OrderDetail(
        _order_line(row),
        [
            RefundLine(
                str(x.refund_no),
                int(x.amount_fen),
                str(x.destination),
                str(x.state),
                str(x.reason),
                str(x.operator),
                x.created_at,
                x.completed_at,
                x.failure,
            )
            for x in refund_rows
        ],
        [
            NotificationLine(str(x.channel), x.received_at, str(x.verdict), str(x.reason), x.notification_id)
            for x in notification_rows
        ],
    )


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


def _id_key(prefix: str, column: ColumnElement[Any]) -> ColumnElement[str]:
    return literal(prefix) + cast(column, String)


def _not_acknowledged(key: ColumnElement[str]) -> ColumnElement[bool]:
    log = audit_log.c
    return ~exists().where(log.action == ACK_ACTION, log.subject == literal("alarm:") + key)


def reconciliation_alarm_lines(
    conn: Connection, organisation_id: int, *, include_acknowledged: bool = False, limit: int = MAX_PAGE
) -> list[AlarmLine]:
    """Reconciliation alarms on the organisation's meters and wallets, newest first."""
    ra = reconciliation_alarms.c
    key = _id_key("reconciliation:", ra.id)
    query = (
        select(ra.id, ra.day, ra.subject, ra.kind, ra.message, ra.created_at, ra.expected, ra.actual)
        .where(_reconciliation_in_organisation(organisation_id))
        .order_by(ra.created_at.desc(), ra.id.desc())
        .limit(_page_bounds(limit, 0)[0])
    )
    if not include_acknowledged:
        query = query.where(_not_acknowledged(key))
    lines = [
        AlarmLine(f"reconciliation:{r.id}", "reconciliation", str(r.subject), str(r.kind), r.created_at, str(r.message))
        for r in conn.execute(query)
    ]
    return _with_acknowledgements(conn, lines)


def _reconciliation_in_organisation(organisation_id: int) -> ColumnElement[bool]:
    """A reconciliation alarm's subject is one of the organisation's meters (``meter:<id>``) or wallets."""
    meter_subjects = select(literal("meter:") + meters.c.id).where(
        meters.c.wallet_account_id.in_(org_wallets(organisation_id))
    )
    wallet_subjects = select(ledger_accounts.c.code).where(ledger_accounts.c.id.in_(org_wallets(organisation_id)))
    subject = reconciliation_alarms.c.subject
    return or_(subject.in_(meter_subjects), subject.in_(wallet_subjects))


def event_alarm_lines(
    conn: Connection, organisation_id: int, *, include_acknowledged: bool = False, limit: int = MAX_PAGE
) -> list[AlarmLine]:
    """Meter events (cover open, reverse current, ...) of the organisation's meters, newest first."""
    e = meter_events.c
    key = _id_key("event:", e.id)
    query = (
        select(e.id, e.meter_id, e.kind, e.at, e.detail)
        .where(e.meter_id.in_(org_meters(organisation_id)))
        .order_by(e.at.desc(), e.id.desc())
        .limit(_page_bounds(limit, 0)[0])
    )
    if not include_acknowledged:
        query = query.where(_not_acknowledged(key))
    lines = [
        AlarmLine(f"event:{r.id}", "event", f"meter:{r.meter_id}", str(r.kind), r.at, str(r.detail or ""))
        for r in conn.execute(query)
    ]
    return _with_acknowledgements(conn, lines)


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
        .where(s.online.is_(False), s.meter_id.in_(org_meters(organisation_id)))
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
    if source == "reconciliation" and rest.isdigit():
        ra = reconciliation_alarms.c
        query = select(ra.id).where(ra.id == int(rest), _reconciliation_in_organisation(organisation_id))
        return conn.execute(query.with_for_update()).first() is not None
    if source == "event" and rest.isdigit():
        e = meter_events.c
        query = select(e.id).where(e.id == int(rest), e.meter_id.in_(org_meters(organisation_id)))
        return conn.execute(query.with_for_update()).first() is not None
    if source == "offline":
        meter_id, _, _seen = rest.rpartition(":")
        s = meter_status.c
        query = select(s.last_seen_at).where(
            s.meter_id == meter_id, s.online.is_(False), s.meter_id.in_(org_meters(organisation_id))
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


# --- audit -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    subject: str | None = None
    actor: str | None = None
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    before_id: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class AuditLine:
    id: int
    at: dt.datetime
    actor: str
    action: str
    subject: str
    reason: str
    detail: str


def _organisation_subjects(organisation_id: int, code: str) -> ColumnElement[bool]:
    """Audit rows about the organisation or written by its users (a tenant's own account included)."""
    s = audit_log.c.subject
    org_accounts = select(_id_key("account:", accounts.c.id)).where(accounts.c.organisation_id == organisation_id)
    org_sites = select(_id_key("site:", sites.c.id)).where(sites.c.organisation_id == organisation_id)
    meter_history = (
        select(literal("meter:") + meter_assignments.c.meter_id)
        .join(accounts, accounts.c.id == meter_assignments.c.account_id)
        .where(accounts.c.organisation_id == organisation_id)
    )
    meter_now = select(literal("meter:") + meters.c.id).where(
        meters.c.wallet_account_id.in_(org_wallets(organisation_id))
    )
    org_orders = select(literal("order:") + orders.c.order_no).where(
        orders.c.wallet_account_id.in_(org_wallets(organisation_id))
    )
    owned_tariffs = select(literal("tariff:") + tariff_owners.c.tariff_id).where(
        tariff_owners.c.organisation_id == organisation_id
    )
    return or_(
        audit_log.c.actor.endswith(f"@{code}", autoescape=True),
        audit_log.c.actor.contains(f"@{code}/key:", autoescape=True),
        s == f"organisation:{code}",
        s.startswith(f"wallet:{code}/", autoescape=True),
        s.startswith(f"user:{code}/", autoescape=True),
        s.startswith(f"api_key:{code}/", autoescape=True),
        s.in_(org_accounts),
        s.in_(org_sites),
        s.in_(meter_history),
        s.in_(meter_now),
        s.in_(org_orders),
        s.in_(owned_tariffs),
    )


def list_audit(conn: Connection, organisation_id: int, wanted: AuditFilter) -> tuple[list[AuditLine], int | None]:
    """One page of the organisation's audit log, newest first; returns (rows, id to continue before or None)."""
    limit = _page_bounds(wanted.limit, 0)[0]
    code = organisation_code(conn, organisation_id)
    log = audit_log.c
    conditions: list[ColumnElement[bool]] = [_organisation_subjects(organisation_id, code)]
    if wanted.subject:
        subject = wanted.subject.strip()[:MAX_SUBJECT_FILTER_CHARS]
        # "account:12" names one subject exactly (not account:120); a bare word searches within subjects.
        exact = ":" in subject
        conditions.append(log.subject == subject if exact else log.subject.icontains(subject, autoescape=True))
    if wanted.actor:
        conditions.append(log.actor.icontains(wanted.actor.strip()[:MAX_SEARCH_CHARS], autoescape=True))
    if wanted.action:
        conditions.append(log.action == wanted.action.strip())
    if wanted.since is not None:
        conditions.append(log.at >= wanted.since)
    if wanted.until is not None:
        conditions.append(log.at < wanted.until)
    if wanted.before_id is not None:
        conditions.append(log.id < wanted.before_id)
    query = select(audit_log).where(and_(*conditions)).order_by(log.id.desc()).limit(limit + 1)
    found = conn.execute(query).all()
    rows = [
        AuditLine(int(r.id), r.at, str(r.actor), str(r.action), str(r.subject), str(r.reason), str(r.detail))
        for r in found[:limit]
    ]
    return rows, (rows[-1].id if len(found) > limit else None)


def audit_actions(conn: Connection) -> list[str]:
    """The distinct actions in the log (for the filter's choices), bounded."""
    query = select(audit_log.c.action).distinct().order_by(audit_log.c.action).limit(MAX_PAGE)
    return [str(a) for (a,) in conn.execute(query)]


# --- tariffs -----------------------------------------------------------------------------------------------


def visible_tariff_ids(organisation_id: int) -> Select[Any]:
    """Tariffs the organisation owns or its meters use (a subquery of ids)."""
    owned = select(tariff_owners.c.tariff_id).where(tariff_owners.c.organisation_id == organisation_id)
    used = select(meters.c.tariff_id).where(meters.c.wallet_account_id.in_(org_wallets(organisation_id)))
    return select(tariffs.c.id).where(or_(tariffs.c.id.in_(owned), tariffs.c.id.in_(used)))


@dataclass(frozen=True, slots=True)
class TariffLine:
    id: str
    name: str
    commodity: str
    document: str
    created_at: dt.datetime
    meters: int
    """Meters of this organisation on the tariff."""
    owner_id: int | None
    shared: bool
    """Used by meters of another organisation too (or owned by one): read-only here."""

    @property
    def editable(self) -> bool:
        return not self.shared


def list_tariffs(conn: Connection, organisation_id: int, tariff_id: str | None = None) -> list[TariffLine]:
    t = tariffs.c
    query = select(t.id, t.name, t.commodity, t.document, t.created_at).where(
        t.id.in_(visible_tariff_ids(organisation_id))
    )
    if tariff_id is not None:
        query = query.where(t.id == tariff_id)
    rows = conn.execute(query.order_by(t.id).limit(MAX_PAGE)).all()
    ids = [str(r.id) for r in rows]
    if not ids:
        return []
    ours: dict[str, int] = {}
    others: set[str] = set()
    usage = (
        select(meters.c.tariff_id, accounts.c.organisation_id, func.count())
        .join(accounts, accounts.c.wallet_account_id == meters.c.wallet_account_id)
        .where(meters.c.tariff_id.in_(ids))
        .group_by(meters.c.tariff_id, accounts.c.organisation_id)
    )
    for used_tariff, used_by, count in conn.execute(usage):
        if int(used_by) == organisation_id:
            ours[str(used_tariff)] = int(count)
        else:
            others.add(str(used_tariff))
    owners = {
        str(tid): int(org)
        for tid, org in conn.execute(
            select(tariff_owners.c.tariff_id, tariff_owners.c.organisation_id).where(tariff_owners.c.tariff_id.in_(ids))
        )
    }
    return [
        TariffLine(
            str(r.id),
            str(r.name),
            str(r.commodity),
            str(r.document),
            r.created_at,
            ours.get(str(r.id), 0),
            owners.get(str(r.id)),
            str(r.id) in others or owners.get(str(r.id), organisation_id) != organisation_id,
        )
        for r in rows
    ]


def tariff_timezones(conn: Connection, tariff_id: str) -> list[str]:
    """The time zones of the meters on the tariff (its versions start at site-local wall times)."""
    query = select(meters.c.timezone).where(meters.c.tariff_id == tariff_id).distinct().order_by(meters.c.timezone)
    return [str(z) for (z,) in conn.execute(query)]


__all__ = [
    "AccountFilter",
    "AccountLine",
    "Acknowledged",
    "AlarmLine",
    "AuditFilter",
    "AuditLine",
    "OrderDetail",
    "OrderFilter",
    "OrderLine",
    "Page",
    "TariffLine",
    "account_in_organisation",
    "acknowledge",
    "audit_actions",
    "event_alarm_lines",
    "list_accounts",
    "list_audit",
    "list_orders",
    "list_tariffs",
    "offline_alarm_lines",
    "order_detail",
    "reconciliation_alarm_lines",
]
