"""The tenant portal's use cases: what a tenant sees of their own account, and the SMS login code flow.

Read models (every one takes a ``TenantAccount`` found by ``tenant_account(conn, organisation_id,
account_id)``, so a query can only ever reach the one account a tenant may see):
- ``home``: balance, run-out forecast, supply state, usage today and this month (energy from the meters'
  register deltas, cost from the wallet's ledger postings: the figures *are* the ledger) with an hourly curve
  for today and a daily one for the month. A reading at a bucket's end belongs to that bucket, as in the daily
  freeze: a reading at 00:00 measures the day that just ended.
- ``orders_of`` / ``refunds_of`` / ``order_of``: bills and receipts; ``statements`` / ``statement_days``:
  monthly statements from the daily freezes (energy, cost, TOU split) and the monthly settlement when made.
- ``recharge_options`` and ``recharge_status``: what may be bought (presets within the site's minimum
  purchase and hoarding limit, the site's enabled online channels) and where a recharge is, from "awaiting
  payment" to "power restored" (the relay read back closed by the meter), or exactly where it failed.
- ``preferences`` / ``save_preferences``: which channels the tenant wants per event kind.

SMS login (``issue_login_code``, ``verify_login_code``): a 6-digit code, stored only as an HMAC under the
server's secret, valid ``CODE_TTL``, single use (a conditional UPDATE consumes it), at most
``MAX_CODE_ATTEMPTS`` guesses, a new one per phone at most every ``RESEND_AFTER`` and at most
``MAX_CODES_PER_PHONE`` an hour, at most ``MAX_CODES_PER_CLIENT`` an hour from one client, and at most
``MAX_FAILURES_PER_PHONE`` / ``MAX_FAILURES_PER_CLIENT`` wrong codes in ``FAILURE_WINDOW``. Password logins are
limited by ``powergate.services.users.authenticate``.
Operating errors come back as ``Refused(field, message)``; nothing is written then, except that a wrong guess
counts as one (that is what the limit is for).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import hmac
import itertools
import json
import secrets
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from powergate.domain.forecast import Forecast
from powergate.domain.money import MICROS_PER_UNIT, currency, format_money, minor_to_micros, parse_micros
from powergate.domain.notifications import URGENT_EVENTS, EventKind
from powergate.domain.structure import FieldError, parse_phone
from powergate.headend.commands import CommandState
from powergate.services import accounts as accounts_service
from powergate.services import forecast as forecast_service
from powergate.services import notify, prepaid
from powergate.services.freeze import register_delta
from powergate.services.meterside import command_id_for
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts, ledger_entries, ledger_postings, meters, readings
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_freeze import BANDS, daily_freezes, monthly_settlements
from powergate.store.tables_headend import meter_status
from powergate.store.tables_notify import notification_preferences, notification_recipients
from powergate.store.tables_payments import orders, refunds
from powergate.store.tables_portal import MAX_CODE_ATTEMPTS, portal_login_codes, portal_login_failures
from powergate.store.tables_prepaid import outbox
from powergate.store.tables_structure import accounts, audit_log, meter_assignments, organisations, sites

COST_KINDS = ("deduction", "standing_charge")
BASELINE_REASON = "baseline"
"""How rating marks a skipped reading that (re)starts a meter's register chain (``domain.rating``)."""
"""Ledger entry kinds that are consumption: their postings to the wallet are the tenant's cost."""
MAX_USAGE_ROWS = 200_000
"""Bound on the readings or postings one home page reads (a month of one-minute readings of four meters)."""
MAX_LIST_ROWS = 200
MAX_STATEMENT_MONTHS = 24
PRESETS_YUAN = (20, 50, 100, 200, 500)
MAX_CUSTOM_MICROS = 100_000 * MICROS_PER_UNIT
"""A portal recharge is at most 100,000 yuan: a typo guard below the order table's own limit."""
ONLINE_CHANNELS = ("wechat", "alipay", "sandbox")
"""Channels a tenant pays through alone; cashier and bank need staff."""
PAY_METHOD = {"wechat": "native", "alipay": "wap", "sandbox": "sandbox"}
"""A phone browser outside WeChat: WeChat Pay opens its ``code_url``, Alipay its mobile (wap) page."""
TENANT_CHANNELS = ("sms", "email", "wechat", "push", "voice")
"""Channels a tenant may choose (webhooks are for integrators, not people)."""
TENANT_EVENTS = (
    EventKind.LOW_BALANCE,
    EventKind.RUNOUT_FORECAST,
    EventKind.TRIPPED,
    EventKind.RESTORED,
    EventKind.RECHARGE_RECEIVED,
    EventKind.REFUND,
)
ACTOR_PREFIX = "tenant:"
SYSTEM_ACTOR = "system:portal"

CODE_DIGITS = 6
CODE_TTL = dt.timedelta(minutes=5)
RESEND_AFTER = dt.timedelta(seconds=60)
CODE_WINDOW = dt.timedelta(hours=1)
MAX_CODES_PER_PHONE = 5
MAX_CODES_PER_CLIENT = 20
FAILURE_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_PHONE = 5
MAX_FAILURES_PER_CLIENT = 20
RETENTION = dt.timedelta(days=1)
MAX_CLIENT_CHARS = 64
RATE_LIMIT = "rate_limit"
"""The ``Refused.field`` of a refusal by a rate limit (the web layer answers 429)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """An operating error: ``field`` names the input at fault, ``message`` says why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# --- the tenant's account ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantAccount:
    id: int
    organisation_id: int
    organisation_code: str
    account_no: str
    name: str
    state: str
    site_id: int
    site_name: str
    timezone: str
    currency: str
    wallet: str
    wallet_account_id: int
    phone: str | None
    email: str | None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def actor(self) -> str:
        return f"{ACTOR_PREFIX}{self.organisation_code}/{self.account_no}"


def tenant_account(conn: Connection, organisation_id: int, account_id: int) -> TenantAccount | None:
    """The account ``account_id`` if it belongs to ``organisation_id``; ``None`` otherwise (the caller says 404)."""
    row = conn.execute(
        select(
            accounts,
            organisations.c.code.label("organisation_code"),
            sites.c.name.label("site_name"),
            sites.c.timezone,
            sites.c.currency,
            ledger_accounts.c.code.label("wallet"),
        )
        .join(organisations, organisations.c.id == accounts.c.organisation_id)
        .join(sites, sites.c.id == accounts.c.site_id)
        .join(ledger_accounts, ledger_accounts.c.id == accounts.c.wallet_account_id)
        .where(accounts.c.id == account_id, accounts.c.organisation_id == organisation_id)
    ).first()
    if row is None:
        return None
    return TenantAccount(
        int(row.id),
        int(row.organisation_id),
        str(row.organisation_code),
        str(row.account_no),
        str(row.name),
        str(row.state),
        int(row.site_id),
        str(row.site_name),
        str(row.timezone),
        str(row.currency),
        str(row.wallet),
        int(row.wallet_account_id),
        row.phone,
        row.email,
    )


def balance_micros(conn: Connection, account: TenantAccount) -> int:
    value = conn.execute(
        select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == account.wallet_account_id)
    ).scalar_one()
    return int(value)


# --- home: balance, forecast, supply, usage --------------------------------------------------------------------


class Supply(StrEnum):
    ON = "on"
    TRIPPED = "tripped"
    PROTECTED = "protected"
    """Power-protect (保电): never tripped, whatever the balance."""
    TEMPORARY = "temporary"
    """Temporary supply until an instant (临时供电)."""


@dataclass(frozen=True, slots=True)
class Usage:
    energy_wh: int = 0
    cost_micros: int = 0


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket of a curve: ``label`` is local ("08:00", "11-05"); the bucket is (start, end]."""

    label: str
    start: dt.datetime
    end: dt.datetime
    energy_wh: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Home:
    account: TenantAccount
    balance_micros: int
    forecast: Forecast
    supply: Supply
    temporary_until: dt.datetime | None
    today: Usage
    month: Usage
    hourly: tuple[Point, ...]
    daily: tuple[Point, ...]
    meter_ids: tuple[str, ...]


def home(conn: Connection, account: TenantAccount, now: dt.datetime) -> Home:
    zone = account.zone
    local_now = now.astimezone(zone)
    day_start = local_midnight(local_now.date(), zone)
    month_start = local_midnight(local_now.date().replace(day=1), zone)
    hours = local_buckets(day_start, local_midnight(local_now.date() + dt.timedelta(days=1), zone), "hour", zone)
    days = local_buckets(month_start, local_midnight(local_now.date() + dt.timedelta(days=1), zone), "day", zone)
    windows = _meter_windows(conn, account)
    energy = _energy_events(conn, windows, month_start, now)
    costs = _cost_events(conn, account.wallet_account_id, month_start, now)
    hourly = fill_buckets(hours, energy, costs)
    daily = fill_buckets(days, energy, costs)
    today = Usage(sum(p.energy_wh for p in hourly), sum(p.cost_micros for p in hourly))
    month = Usage(sum(p.energy_wh for p in daily), sum(p.cost_micros for p in daily))
    supply, until = supply_state(conn, account, [meter for meter, _, _ in windows], now)
    return Home(
        account,
        balance_micros(conn, account),
        forecast_service.wallet_forecast(conn, account.wallet_account_id),
        supply,
        until,
        today,
        month,
        tuple(hourly),
        tuple(daily),
        tuple(sorted({meter for meter, _, valid_to in windows if valid_to is None})),
    )


def usage_between(conn: Connection, account: TenantAccount, start: dt.datetime, end: dt.datetime) -> Usage:
    """Energy and cost in (start, end]: the figures ``home`` sums, for any interval."""
    windows = _meter_windows(conn, account)
    energy = _energy_events(conn, windows, start, end)
    costs = _cost_events(conn, account.wallet_account_id, start, end)
    return Usage(sum(wh for _, wh in energy), sum(c for _, c in costs))


def local_midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def local_buckets(
    start: dt.datetime, end: dt.datetime, unit: str, zone: ZoneInfo
) -> list[tuple[str, dt.datetime, dt.datetime]]:
    found: list[tuple[str, dt.datetime, dt.datetime]] = []
    cursor = start
    while cursor < end:
        local = cursor.astimezone(zone)
        if unit == "hour":
            step = min(cursor + dt.timedelta(hours=1), end)  # a 23.5-hour day (Lord Howe) ends on a half hour
            label = f"{local:%H}:00"
        else:
            step = local_midnight(local.date() + dt.timedelta(days=1), zone)
            label = f"{local:%m-%d}"
        found.append((label, cursor, step))
        cursor = step
    return found


def fill_buckets(
    buckets: Sequence[tuple[str, dt.datetime, dt.datetime]],
    energy: Sequence[tuple[dt.datetime, int]],
    costs: Sequence[tuple[dt.datetime, int]],
) -> list[Point]:
    """Sum (time, value) events into contiguous ``(start, end]`` buckets: one sort and a binary search each."""
    energy_sums, cost_sums = _bucket_sums(buckets, energy), _bucket_sums(buckets, costs)
    return [
        Point(label, start, end, wh, cost)
        for (label, start, end), wh, cost in zip(buckets, energy_sums, cost_sums, strict=True)
    ]


def _bucket_sums(
    buckets: Sequence[tuple[str, dt.datetime, dt.datetime]], events: Sequence[tuple[dt.datetime, int]]
) -> list[int]:
    ordered = sorted(events, key=lambda event: event[0])
    times = [at for at, _ in ordered]
    running = [0, *itertools.accumulate(value for _, value in ordered)]
    # bisect_right: an event exactly at a bucket's end belongs to that bucket, one at its start to the one before
    return [
        running[bisect.bisect_right(times, end)] - running[bisect.bisect_right(times, start)]
        for _, start, end in buckets
    ]


Window = tuple[str, dt.datetime | None, dt.datetime | None]
"""(meter id, held from, held until): when the account held the meter (``None``: open-ended)."""


def _meter_windows(conn: Connection, account: TenantAccount) -> list[Window]:
    """The account's meters and when it held them; a meter on the wallet with no assignment at all counts always."""
    held = conn.execute(
        select(meter_assignments.c.meter_id, meter_assignments.c.valid_from, meter_assignments.c.valid_to)
        .where(meter_assignments.c.account_id == account.id)
        .order_by(meter_assignments.c.meter_id, meter_assignments.c.valid_from)
    ).all()
    windows: list[Window] = [(str(m), start, end) for m, start, end in held]
    unassigned = conn.execute(
        select(meters.c.id).where(
            meters.c.wallet_account_id == account.wallet_account_id,
            ~select(meter_assignments.c.id).where(meter_assignments.c.meter_id == meters.c.id).exists(),
        )
    ).scalars()
    windows.extend((str(m), None, None) for m in unassigned)
    return windows


def _energy_events(
    conn: Connection, windows: Sequence[Window], start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, int]]:
    """(reading time, energy since the previous reading) for rated readings in (start, end] inside each window.

    The chain is the readings rating used: rated ones, and baselines (a meter's first reading, a replacement's
    initial reading), which restart it and bring no energy. Duplicates, out-of-order and quarantined readings
    are left out, as rating left them out. Energy is the register delta (a rollover counts, a reset does not).
    """
    found: list[tuple[dt.datetime, int]] = []
    for meter_id, held_from, held_to in windows:
        low = start if held_from is None else max(start, held_from)
        high = end if held_to is None else min(end, held_to)
        if low >= high:
            continue
        register_max = int(conn.execute(select(meters.c.register_max_wh).where(meters.c.id == meter_id)).scalar_one())
        used = and_(
            readings.c.meter_id == meter_id,
            or_(
                readings.c.status == "rated",
                and_(readings.c.status == "skipped", readings.c.reason.startswith(BASELINE_REASON)),
            ),
        )
        base = conn.execute(
            select(readings.c.total_wh).where(used, readings.c.at <= low).order_by(readings.c.at.desc()).limit(1)
        ).scalar()
        rows = conn.execute(
            select(readings.c.at, readings.c.total_wh, readings.c.status)
            .where(used, readings.c.at > low, readings.c.at <= high)
            .order_by(readings.c.at, readings.c.id)
            .limit(MAX_USAGE_ROWS)
        ).all()
        previous = None if base is None else int(base)
        for at, total_wh, status in rows:
            if previous is not None and status == "rated":
                found.append((at, register_delta(previous, int(total_wh), register_max)[0]))
            previous = int(total_wh)
    return found


def _cost_events(
    conn: Connection, wallet_account_id: int, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, int]]:
    """(event time, cost) of every consumption posting to the wallet in (start, end]: the ledger's own figures."""
    rows = conn.execute(
        select(ledger_entries.c.event_at, ledger_postings.c.amount_micros)
        .join(ledger_postings, ledger_postings.c.entry_id == ledger_entries.c.id)
        .where(
            ledger_postings.c.account_id == wallet_account_id,
            ledger_entries.c.kind.in_(COST_KINDS),
            ledger_entries.c.event_at > start,
            ledger_entries.c.event_at <= end,
        )
        .limit(MAX_USAGE_ROWS)
    ).all()
    return [(at, -int(amount)) for at, amount in rows]


def supply_state(
    conn: Connection, account: TenantAccount, meter_ids: Collection[str], now: dt.datetime
) -> tuple[Supply, dt.datetime | None]:
    """Protected, temporary (until when), tripped (the platform's decision or a meter's own relay) or on."""
    policy = prepaid.get_policy(conn, account.wallet_account_id)
    if policy.power_protect:
        return Supply.PROTECTED, None
    if policy.temporary_until is not None and policy.temporary_until > now:
        return Supply.TEMPORARY, policy.temporary_until
    state = prepaid.wallet_state(conn, account.wallet_account_id)
    relay_open = False
    if meter_ids:
        relay_open = bool(
            conn.execute(
                select(func.count())
                .select_from(meter_status)
                .where(meter_status.c.meter_id.in_(sorted(meter_ids)), meter_status.c.relay_open.is_(True))
            ).scalar_one()
        )
    if relay_open or (state is not None and not state.supply_on):
        return Supply.TRIPPED, None
    return Supply.ON, None


# --- bills and receipts -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderLine:
    order_no: str
    channel: str
    method: str
    amount_fen: int
    state: str
    created_at: dt.datetime
    expires_at: dt.datetime
    paid_at: dt.datetime | None
    refunded_fen: int
    provider_txn_id: str | None
    receipt_no: str | None
    closed_reason: str | None
    pay_parameters: Mapping[str, str]

    @property
    def amount_micros(self) -> int:
        return minor_to_micros(self.amount_fen)

    @property
    def paid(self) -> bool:
        return self.state in ("paid", "refunded", "partially_refunded")


@dataclass(frozen=True, slots=True)
class RefundLine:
    refund_no: str
    order_no: str | None
    channel: str
    amount_fen: int
    destination: str
    state: str
    reason: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    failure: str | None

    @property
    def amount_micros(self) -> int:
        return minor_to_micros(self.amount_fen)


def _order_line(row: Any) -> OrderLine:
    parameters = json.loads(row.pay_parameters) if row.pay_parameters else {}
    return OrderLine(
        str(row.order_no),
        str(row.channel),
        str(row.method),
        int(row.amount_fen),
        str(row.state),
        row.created_at,
        row.expires_at,
        row.paid_at,
        int(row.refunded_fen),
        row.provider_txn_id,
        row.receipt_no,
        row.closed_reason,
        {str(k): str(v) for k, v in parameters.items()},
    )


def orders_of(conn: Connection, account: TenantAccount, limit: int = 50, offset: int = 0) -> list[OrderLine]:
    """The account's orders, newest first."""
    assert 0 < limit <= MAX_LIST_ROWS and offset >= 0
    rows = conn.execute(
        select(orders)
        .where(orders.c.wallet_account_id == account.wallet_account_id)
        .order_by(orders.c.created_at.desc(), orders.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_order_line(row) for row in rows]


def order_of(conn: Connection, account: TenantAccount, order_no: str) -> OrderLine | None:
    """One order of this account; ``None`` for an unknown order or another account's (the caller says 404)."""
    row = conn.execute(
        select(orders).where(
            orders.c.order_no == order_no[:64], orders.c.wallet_account_id == account.wallet_account_id
        )
    ).first()
    return None if row is None else _order_line(row)


def refunds_of(conn: Connection, account: TenantAccount, limit: int = 50) -> list[RefundLine]:
    assert 0 < limit <= MAX_LIST_ROWS
    rows = conn.execute(
        select(refunds)
        .where(refunds.c.wallet_account_id == account.wallet_account_id)
        .order_by(refunds.c.created_at.desc(), refunds.c.id.desc())
        .limit(limit)
    )
    return [
        RefundLine(
            str(r.refund_no),
            r.order_no,
            str(r.channel),
            int(r.amount_fen),
            str(r.destination),
            str(r.state),
            str(r.reason),
            r.created_at,
            r.completed_at,
            r.failure,
        )
        for r in rows
    ]


# --- monthly statements from the daily freezes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BandUsage:
    band: str
    energy_wh: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class SettlementLine:
    opening_micros: int
    recharges_micros: int
    deductions_micros: int
    refunds_micros: int
    adjustments_micros: int
    closing_micros: int


@dataclass(frozen=True, slots=True)
class Statement:
    month: dt.date
    days: int
    energy_wh: int
    cost_micros: int
    bands: tuple[BandUsage, ...]
    bands_complete: bool
    """False when some day's meter reported totals only: the band split covers the other days."""
    estimated: bool
    settlement: SettlementLine | None


@dataclass(frozen=True, slots=True)
class StatementDay:
    day: dt.date
    energy_wh: int
    cost_micros: int
    bands: tuple[BandUsage, ...] | None
    balance_micros: int
    estimated: bool


def statements(conn: Connection, account: TenantAccount, now: dt.datetime, months: int = 12) -> list[Statement]:
    """One statement per month with frozen days, newest first, at most ``months`` back from this month."""
    assert 0 < months <= MAX_STATEMENT_MONTHS
    today = now.astimezone(account.zone).date()
    first = _add_months(today.replace(day=1), -(months - 1))
    rows = _freeze_rows(conn, account, first, None)
    by_month: dict[dt.date, list[Any]] = {}
    for row in rows:
        by_month.setdefault(row.day.replace(day=1), []).append(row)
    settled = {
        row.month: SettlementLine(
            int(row.opening_micros),
            int(row.recharges_micros),
            int(row.deductions_micros),
            int(row.refunds_micros),
            int(row.adjustments_micros),
            int(row.closing_micros),
        )
        for row in conn.execute(
            select(monthly_settlements).where(
                monthly_settlements.c.wallet_account_id == account.wallet_account_id,
                monthly_settlements.c.month >= first,
            )
        )
    }
    found = [_statement(month, group, settled.get(month)) for month, group in by_month.items()]
    return sorted(found, key=lambda s: s.month, reverse=True)


def statement_days(conn: Connection, account: TenantAccount, month: dt.date) -> list[StatementDay]:
    """The frozen days of one month (``month`` is its first day), oldest first; a wallet's meters summed per day."""
    last = _add_months(month, 1) - dt.timedelta(days=1)
    by_day: dict[dt.date, list[Any]] = {}
    for row in _freeze_rows(conn, account, month, last):
        by_day.setdefault(row.day, []).append(row)
    days: list[StatementDay] = []
    for day, group in sorted(by_day.items()):
        bands, complete = _band_sums(group)
        days.append(
            StatementDay(
                day,
                sum(int(r.energy_wh) for r in group),
                sum(int(r.cost_micros) for r in group),
                bands if complete else None,
                int(group[0].balance_micros),
                any(bool(r.estimated) for r in group),
            )
        )
    return days


def _freeze_rows(conn: Connection, account: TenantAccount, first: dt.date, last: dt.date | None) -> list[Any]:
    query = select(daily_freezes).where(
        daily_freezes.c.wallet_account_id == account.wallet_account_id, daily_freezes.c.day >= first
    )
    if last is not None:
        query = query.where(daily_freezes.c.day <= last)
    return list(conn.execute(query.order_by(daily_freezes.c.day, daily_freezes.c.meter_id).limit(MAX_USAGE_ROWS)))


def _band_sums(rows: Sequence[Any]) -> tuple[tuple[BandUsage, ...], bool]:
    with_bands = [r for r in rows if getattr(r, f"{BANDS[0]}_energy_wh") is not None]
    bands = tuple(
        BandUsage(
            band,
            sum(int(getattr(r, f"{band}_energy_wh")) for r in with_bands),
            sum(int(getattr(r, f"{band}_cost_micros")) for r in with_bands),
        )
        for band in BANDS
    )
    return bands, len(with_bands) == len(rows)


def _statement(month: dt.date, rows: Sequence[Any], settlement: SettlementLine | None) -> Statement:
    bands, complete = _band_sums(rows)
    return Statement(
        month,
        len({r.day for r in rows}),
        sum(int(r.energy_wh) for r in rows),
        sum(int(r.cost_micros) for r in rows),
        bands,
        complete,
        any(bool(r.estimated) for r in rows),
        settlement,
    )


def _add_months(first_of_month: dt.date, delta: int) -> dt.date:
    index = first_of_month.year * 12 + first_of_month.month - 1 + delta
    return dt.date(index // 12, index % 12 + 1, 1)


def parse_month(text: str) -> dt.date | Refused:
    """``2026-11`` as the first day of that month."""
    try:
        year, month = (int(part) for part in text.split("-", 1))
        return dt.date(year, month, 1)
    except ValueError:
        return Refused("month", f"{text[:20]!r} is not a month such as 2026-11")


# --- recharge --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RechargeOptions:
    balance_micros: int
    min_micros: int
    max_micros: int | None
    """What may be bought now under the hoarding limit; ``None``: no limit (below the typo guard)."""
    presets_micros: tuple[int, ...]
    channels: tuple[str, ...]
    open: bool
    """Only an open account can be recharged."""


def recharge_options(conn: Connection, account: TenantAccount, configured: Collection[str]) -> RechargeOptions:
    """Presets within the site's rules and the channels a tenant can pay through here (enabled and configured)."""
    policy = accounts_service.site_payment_policy(conn, account.site_id)
    assert policy is not None, "a tenant account always has its site"
    balance = balance_micros(conn, account)
    step = currency(account.currency).micros_per_minor
    low = max(policy.min_purchase_micros, step)
    high = None
    if policy.hoarding_limit_micros is not None:
        room = policy.hoarding_limit_micros - balance
        high = max(room - room % step, 0)
    presets = tuple(
        yuan * MICROS_PER_UNIT
        for yuan in PRESETS_YUAN
        if yuan * MICROS_PER_UNIT >= low and (high is None or yuan * MICROS_PER_UNIT <= high)
    )
    enabled = {c.value for c in policy.channels}
    channels = tuple(c for c in ONLINE_CHANNELS if c in enabled and c in configured)
    return RechargeOptions(balance, low, high, presets, channels, account.state == "open")


def parse_amount(text: str, options: RechargeOptions, currency_code: str = "CNY") -> int | Refused:
    """A tenant's amount in yuan ("50", "12.5") as micros, within the site's rules; a clear refusal otherwise."""
    cur = currency(currency_code)
    raw = text.strip()
    if not raw:
        return Refused("amount", "choose or enter an amount")
    try:
        amount = parse_micros(raw, field="amount", max_decimals=cur.exponent)
    except ValueError as error:
        return Refused("amount", str(error).removeprefix("amount: "))
    if amount <= 0:
        return Refused("amount", "must be more than zero")
    if amount > MAX_CUSTOM_MICROS:
        return Refused("amount", f"at most {MAX_CUSTOM_MICROS // MICROS_PER_UNIT} at a time")
    if amount < options.min_micros:
        return Refused("amount", f"below the minimum purchase of {format_money(options.min_micros, cur)}")
    if options.max_micros is not None and amount > options.max_micros:
        return Refused(
            "amount",
            f"above what the hoarding limit still allows ({format_money(options.max_micros, cur)} at most now)",
        )
    return amount


class Stage(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    """Paid; the relay decision or the command is on its way to the queue."""
    QUEUED = "queued"
    """A command for the meter is queued and not sent yet (the meter may be busy or offline)."""
    SENT = "sent"
    """Sent to the meter (and possibly acknowledged); not read back yet."""
    RESTORED = "restored"
    """The meter's relay was read back closed: power restored."""
    METER_CREDITED = "meter_credited"
    """Meter-side billing: the meter confirmed the credit (its purchase count)."""
    SUPPLY_ON = "supply_on"
    """Paid into a wallet whose supply was on: nothing to restore."""
    STILL_OFF = "still_off"
    """Paid, but the balance is still below what restores supply."""
    FAILED = "failed"


TERMINAL_STAGES = frozenset({Stage.RESTORED, Stage.METER_CREDITED, Stage.SUPPLY_ON, Stage.STILL_OFF, Stage.FAILED})


@dataclass(frozen=True, slots=True)
class CommandLine:
    command_id: str
    meter_id: str
    kind: str
    state: str
    last_error: str | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RechargeStatus:
    order: OrderLine
    stage: Stage
    detail: str
    """The precise reason of a failure (as the system recorded it), or empty."""
    commands: tuple[CommandLine, ...]
    balance_micros: int

    @property
    def terminal(self) -> bool:
        return self.stage in TERMINAL_STAGES


def recharge_status(conn: Connection, account: TenantAccount, order_no: str, now: dt.datetime) -> RechargeStatus | None:
    """Where this account's order is: payment, then the command to the meter, then the meter's read-back."""
    order = order_of(conn, account, order_no)
    if order is None:
        return None
    balance = balance_micros(conn, account)
    if order.state == "created":
        if order.expires_at <= now:
            return RechargeStatus(order, Stage.FAILED, "the order expired before it was paid", (), balance)
        return RechargeStatus(order, Stage.AWAITING_PAYMENT, "", (), balance)
    if order.state in ("closed", "expired"):
        reason = order.closed_reason or f"the order was {order.state}"
        return RechargeStatus(order, Stage.FAILED, reason, (), balance)
    assert order.paid and order.provider_txn_id is not None
    meterside = _commands(conn, meter_commands.c.id == command_id_for(f"{order.channel}:{order.provider_txn_id}"))
    if meterside:
        return _from_commands(order, meterside, balance, Stage.METER_CREDITED)
    settled_at = conn.execute(
        select(audit_log.c.at)
        .where(audit_log.c.action == "recharge", audit_log.c.subject == f"order:{order.order_no}")
        .order_by(audit_log.c.id)
        .limit(1)
    ).scalar()
    close = None
    if settled_at is not None:
        close = conn.execute(
            select(outbox.c.key, outbox.c.processed_at, outbox.c.last_error)
            .where(
                outbox.c.kind == "close",
                outbox.c.wallet_account_id == account.wallet_account_id,
                outbox.c.created_at == settled_at,
            )
            .order_by(outbox.c.id)
            .limit(1)
        ).first()
    if close is None:
        state = prepaid.wallet_state(conn, account.wallet_account_id)
        if state is not None and not state.supply_on:
            return RechargeStatus(order, Stage.STILL_OFF, "", (), balance)
        return RechargeStatus(order, Stage.SUPPLY_ON, "", (), balance)
    if close.processed_at is None:
        return RechargeStatus(order, Stage.PAID, "", (), balance)
    lines = _commands(conn, meter_commands.c.id.startswith(f"{close.key}:", autoescape=True))
    if not lines:
        return RechargeStatus(order, Stage.FAILED, close.last_error or "no meter to restore", (), balance)
    return _from_commands(order, lines, balance, Stage.RESTORED)


def _commands(conn: Connection, condition: Any) -> list[CommandLine]:
    rows = conn.execute(
        select(
            meter_commands.c.id,
            meter_commands.c.meter_id,
            meter_commands.c.kind,
            meter_commands.c.state,
            meter_commands.c.last_error,
            meter_commands.c.updated_at,
        )
        .where(condition)
        .order_by(meter_commands.c.meter_id)
        .limit(100)
    )
    return [
        CommandLine(str(r.id), str(r.meter_id), str(r.kind), str(r.state), r.last_error, r.updated_at) for r in rows
    ]


FAILED_COMMAND_STATES = (CommandState.FAILED.value, CommandState.EXPIRED.value, CommandState.CANCELLED.value)


def _from_commands(order: OrderLine, lines: list[CommandLine], balance: int, done: Stage) -> RechargeStatus:
    failed = [c for c in lines if c.state in FAILED_COMMAND_STATES]
    if failed:
        first = failed[0]
        detail = f"meter {first.meter_id}: {first.kind} {first.state}" + (
            f": {first.last_error}" if first.last_error else ""
        )
        return RechargeStatus(order, Stage.FAILED, detail, tuple(lines), balance)
    states = {c.state for c in lines}
    if states == {CommandState.VERIFIED.value}:
        stage = done
    elif states & {CommandState.SENT.value, CommandState.ACKED.value, CommandState.VERIFIED.value}:
        stage = Stage.SENT
    else:
        stage = Stage.QUEUED
    return RechargeStatus(order, stage, "", tuple(lines), balance)


# --- notification preferences -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preferences:
    recipient_id: int | None
    available: tuple[str, ...]
    """Channels the tenant has an address for (the others cannot be chosen)."""
    chosen: Mapping[EventKind, tuple[str, ...]]


def _address_of(row: Any, channel: str) -> str | None:
    value = getattr(row, notify.ADDRESS_COLUMNS[channel], None)
    return str(value) if value else None


def preferences(conn: Connection, account: TenantAccount) -> Preferences:
    """What the tenant hears about on which channel; the defaults when nothing was chosen yet. Writes nothing."""
    recipient = conn.execute(
        select(notification_recipients).where(notification_recipients.c.account_id == account.id)
    ).first()
    if recipient is None:
        addresses: dict[str, str | None] = {"sms": account.phone, "voice": account.phone, "email": account.email}
        available = tuple(c for c in TENANT_CHANNELS if addresses.get(c))
        chosen = {kind: _default_channels(kind, available) for kind in TENANT_EVENTS}
        return Preferences(None, available, chosen)
    available = tuple(c for c in TENANT_CHANNELS if _address_of(recipient, c))
    stored = {
        EventKind(event): tuple(c for c in str(channels).split(",") if c)
        for event, channels in conn.execute(
            select(notification_preferences.c.event, notification_preferences.c.channels).where(
                notification_preferences.c.recipient_id == recipient.id
            )
        )
    }
    chosen = {
        kind: tuple(c for c in stored[kind] if c in available) if kind in stored else _default_channels(kind, available)
        for kind in TENANT_EVENTS
    }
    return Preferences(int(recipient.id), available, chosen)


def _default_channels(kind: EventKind, available: Iterable[str]) -> tuple[str, ...]:
    if kind not in notify.TENANT_DEFAULT_EVENTS:
        return ()
    return tuple(c for c in available if c != "voice" or kind in URGENT_EVENTS)


def save_preferences(
    conn: Connection, account: TenantAccount, chosen: Mapping[str, Collection[str]], now: dt.datetime
) -> Preferences | Refused:
    """Store the tenant's choice per event (event name -> channels); every tenant event is set, unlisted ones to none.

    Unknown events or channels, and channels without an address, are refused naming them; nothing is written then.
    """
    current = preferences(conn, account)
    known = {kind.value for kind in TENANT_EVENTS}
    for event, channels in chosen.items():
        if event not in known:
            return Refused("event", f"{event[:40]!r} is not an event a tenant is told about")
        for channel in channels:
            if channel not in TENANT_CHANNELS:
                return Refused("channel", f"{channel[:20]!r} is not a channel (known: {', '.join(TENANT_CHANNELS)})")
            if channel not in current.available:
                return Refused("channel", f"there is no {channel} address for this account; ask the site office")
    recipient_id = current.recipient_id
    if recipient_id is None:
        added = notify.add_recipient(
            conn,
            account.site_id,
            account.name,
            account_id=account.id,
            addresses=notify.Addresses(email=account.email, phone=account.phone),
        )
        if isinstance(added, notify.Rejected):
            return Refused(added.field, added.message)
        recipient_id = added
    choice = {kind.value: sorted(set(chosen.get(kind.value, ())), key=TENANT_CHANNELS.index) for kind in TENANT_EVENTS}
    for kind in TENANT_EVENTS:
        problem = notify.set_preference(conn, recipient_id, kind, choice[kind.value])
        assert problem is None, problem  # checked above
    record_audit(
        conn, account.actor, "set_notification_preferences", f"account:{account.id}", "tenant portal", choice, now
    )
    return preferences(conn, account)


# --- SMS login codes and login rate limits ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeIssued:
    code_id: int
    phone: str
    code: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PhoneVerified:
    phone: str
    code_id: int


def normalise_phone(text: str) -> str | Refused:
    try:
        phone = parse_phone(text)
    except FieldError as error:
        return Refused("phone", error.message)
    if phone is None:
        return Refused("phone", "enter your mobile number")
    return phone


def code_hash(secret_key: str, phone: str, code: str) -> str:
    return hmac.new(secret_key.encode(), f"{phone}\n{code}".encode(), hashlib.sha256).hexdigest()


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def issue_login_code(
    conn: Connection, phone: str, *, client: str, secret_key: str, now: dt.datetime, code: str | None = None
) -> CodeIssued | Refused:
    """A new code for ``phone`` (already normalised) unless a limit says wait; earlier codes stop counting."""
    client = client[:MAX_CLIENT_CHARS]
    prune(conn, now)
    codes = portal_login_codes.c
    recent = conn.execute(
        select(func.count(), func.max(codes.created_at)).where(
            codes.phone == phone, codes.created_at > now - CODE_WINDOW
        )
    ).one()
    count, last = int(recent[0]), recent[1]
    if last is not None and now - last < RESEND_AFTER:
        wait = int((RESEND_AFTER - (now - last)).total_seconds()) + 1
        return Refused(RATE_LIMIT, f"a code was sent just now; ask again in {wait} s")
    if count >= MAX_CODES_PER_PHONE:
        return Refused(RATE_LIMIT, f"{MAX_CODES_PER_PHONE} codes were sent to this number in the last hour; try later")
    from_client = conn.execute(
        select(func.count()).where(codes.client == client, codes.created_at > now - CODE_WINDOW)
    ).scalar_one()
    if int(from_client) >= MAX_CODES_PER_CLIENT:
        return Refused(RATE_LIMIT, "too many codes were asked for from this device; try again in an hour")
    # Only the newest code counts: older ones are consumed so they cannot be guessed in parallel.
    conn.execute(
        update(portal_login_codes).where(codes.phone == phone, codes.consumed_at.is_(None)).values(consumed_at=now)
    )
    code = code or new_code()
    assert len(code) == CODE_DIGITS and code.isdigit()
    expires_at = now + CODE_TTL
    result = conn.execute(
        insert(portal_login_codes).values(
            phone=phone,
            code_hash=code_hash(secret_key, phone, code),
            client=client,
            created_at=now,
            expires_at=expires_at,
            attempts=0,
            delivery="sending",
        )
    )
    assert result.inserted_primary_key is not None
    return CodeIssued(int(result.inserted_primary_key[0]), phone, code, expires_at)


def mark_delivery(conn: Connection, code_id: int, ok: bool) -> None:
    """Record the SMS gateway's answer; a code that could not be sent can never be used."""
    values: dict[str, Any] = {"delivery": "sent" if ok else "failed"}
    if not ok:
        values["consumed_at"] = portal_login_codes.c.created_at
    conn.execute(update(portal_login_codes).where(portal_login_codes.c.id == code_id).values(**values))


def verify_login_code(
    conn: Connection, phone: str, code: str, *, client: str, secret_key: str, now: dt.datetime
) -> PhoneVerified | Refused:
    """Check ``code`` against the newest code sent to ``phone``; a right code is consumed (single use).

    A wrong guess counts against the code (``MAX_CODE_ATTEMPTS``) and against the client's failures; the
    caller commits the transaction either way.
    """
    client = client[:MAX_CLIENT_CHARS]
    limited = _failures_limited(conn, phone, client, now)
    if limited is not None:
        return limited
    code = code.strip()
    if not (len(code) == CODE_DIGITS and code.isdigit()):
        return Refused("code", f"the code is {CODE_DIGITS} digits")
    codes = portal_login_codes.c
    row = conn.execute(
        select(portal_login_codes)
        .where(codes.phone == phone)
        .order_by(codes.created_at.desc(), codes.id.desc())
        .limit(1)
    ).first()
    if row is None or row.delivery == "failed":
        record_failure(conn, phone, client, now)
        return Refused("code", "no code was sent to this number; ask for one")
    if row.consumed_at is not None:
        return Refused("code", "this code was used already; ask for a new one")
    if row.expires_at <= now:
        return Refused("code", "the code has expired; ask for a new one")
    if row.attempts >= MAX_CODE_ATTEMPTS:
        return Refused("code", "too many wrong codes; ask for a new one")
    counted = conn.execute(
        update(portal_login_codes)
        .where(codes.id == row.id, codes.attempts < MAX_CODE_ATTEMPTS, codes.consumed_at.is_(None))
        .values(attempts=codes.attempts + 1)
    )
    if counted.rowcount != 1:  # another request got there first (PostgreSQL re-checks after it commits)
        consumed = conn.execute(select(codes.consumed_at).where(codes.id == row.id)).scalar()
        if consumed is not None:
            return Refused("code", "this code was used already; ask for a new one")
        return Refused("code", "too many wrong codes; ask for a new one")
    if not hmac.compare_digest(str(row.code_hash), code_hash(secret_key, phone, code)):
        record_failure(conn, phone, client, now)
        left = MAX_CODE_ATTEMPTS - int(row.attempts) - 1
        if left <= 0:
            return Refused("code", "too many wrong codes; ask for a new one")
        return Refused("code", f"wrong code; {left} {'try' if left == 1 else 'tries'} left")
    used = conn.execute(
        update(portal_login_codes).where(codes.id == row.id, codes.consumed_at.is_(None)).values(consumed_at=now)
    )
    if used.rowcount != 1:
        return Refused("code", "this code was used already; ask for a new one")
    return PhoneVerified(phone, int(row.id))


def _failures_limited(conn: Connection, phone: str, client: str, now: dt.datetime) -> Refused | None:
    failures = portal_login_failures.c
    since = now - FAILURE_WINDOW
    minutes = int(FAILURE_WINDOW.total_seconds() // 60)
    by_phone = conn.execute(select(func.count()).where(failures.phone == phone, failures.at > since)).scalar_one()
    if int(by_phone) >= MAX_FAILURES_PER_PHONE:
        return Refused(RATE_LIMIT, f"too many wrong codes for this number; wait {minutes} minutes")
    by_client = conn.execute(select(func.count()).where(failures.client == client, failures.at > since)).scalar_one()
    if int(by_client) >= MAX_FAILURES_PER_CLIENT:
        return Refused(RATE_LIMIT, f"too many failed logins from this device; wait {minutes} minutes")
    return None


def record_failure(conn: Connection, phone: str, client: str, now: dt.datetime) -> None:
    conn.execute(insert(portal_login_failures).values(phone=phone, client=client[:MAX_CLIENT_CHARS], at=now))


def prune(conn: Connection, now: dt.datetime) -> None:
    """Forget codes and failures older than ``RETENTION`` (they no longer count against any limit)."""
    cutoff = now - RETENTION
    conn.execute(delete(portal_login_codes).where(portal_login_codes.c.created_at < cutoff))
    conn.execute(delete(portal_login_failures).where(portal_login_failures.c.at < cutoff))


@dataclass(frozen=True, slots=True)
class PhoneLogin:
    """Who a verified phone may log in as: a tenant user, or an open account with no tenant user yet."""

    organisation_id: int
    account_id: int
    account_no: str
    user_id: int | None


def phone_logins(conn: Connection, phone: str, account_no: str | None = None) -> list[PhoneLogin]:
    """The tenant logins for ``phone`` (users with that phone, open accounts with that phone and no user)."""
    from powergate.store.tables_auth import users

    tenant_users = conn.execute(
        select(users.c.id, users.c.organisation_id, users.c.account_id, accounts.c.account_no)
        .join(accounts, accounts.c.id == users.c.account_id)
        .where(users.c.role == "tenant", users.c.phone == phone, users.c.disabled.is_(False))
        .order_by(users.c.id)
        .limit(MAX_LIST_ROWS)
    ).all()
    found = [PhoneLogin(int(r.organisation_id), int(r.account_id), str(r.account_no), int(r.id)) for r in tenant_users]
    has_user = select(users.c.id).where(users.c.account_id == accounts.c.id, users.c.role == "tenant").exists()
    bare = conn.execute(
        select(accounts.c.organisation_id, accounts.c.id, accounts.c.account_no)
        .where(accounts.c.phone == phone, accounts.c.state == "open", ~has_user)
        .order_by(accounts.c.id)
        .limit(MAX_LIST_ROWS)
    ).all()
    found.extend(PhoneLogin(int(r.organisation_id), int(r.id), str(r.account_no), None) for r in bare)
    if account_no:
        found = [login for login in found if login.account_no == account_no.strip()]
    return found


def choose_phone_login(conn: Connection, phone: str, account_no: str | None) -> PhoneLogin | Refused:
    """The one login for this phone (and account number, when the phone has several); a clear refusal otherwise."""
    found = phone_logins(conn, phone, account_no)
    if not found:
        return Refused("phone", "no account with this mobile number (and account number); ask the site office")
    if len({(login.organisation_id, login.account_id) for login in found}) > 1:
        return Refused("account_no", "this number belongs to several accounts; enter the account number as well")
    return found[0]


def ensure_tenant_user(conn: Connection, login: PhoneLogin, phone: str, now: dt.datetime) -> int | Refused:
    """The tenant user to log in; an open account reached by its phone for the first time gets one (audited)."""
    from powergate.services import users

    if login.user_id is not None:
        return login.user_id
    taken = users.find_user(conn, _organisation_code(conn, login.organisation_id), login.account_no)
    username = login.account_no if taken is None else f"{login.account_no}-{secrets.token_hex(3)}"
    made = users.create_user(
        conn,
        login.organisation_id,
        username,
        secrets.token_urlsafe(24),
        users.Role.TENANT,
        account_id=login.account_id,
        phone=phone,
        actor=SYSTEM_ACTOR,
        now=now,
        reason="first portal login by SMS code to the account's phone",
    )
    if not isinstance(made, int):
        return Refused(made.field, made.message)
    return made


def _organisation_code(conn: Connection, organisation_id: int) -> str:
    return str(conn.execute(select(organisations.c.code).where(organisations.c.id == organisation_id)).scalar_one())


__all__ = [
    "CODE_TTL",
    "MAX_CODE_ATTEMPTS",
    "Home",
    "Point",
    "Preferences",
    "RechargeOptions",
    "RechargeStatus",
    "Refused",
    "Stage",
    "Statement",
    "Supply",
    "TenantAccount",
    "Usage",
    "home",
    "issue_login_code",
    "order_of",
    "orders_of",
    "preferences",
    "recharge_options",
    "recharge_status",
    "refunds_of",
    "save_preferences",
    "statement_days",
    "statements",
    "tenant_account",
    "verify_login_code",
]
