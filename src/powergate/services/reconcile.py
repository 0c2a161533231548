"""Daily reconciliation: money in, money out and balances tie together, exact to the micro, per wallet and site.

For a day D (00:00 to 24:00 in each site's own time zone; by the entries' *event* time, so a reading rated late
still counts on the day its energy was used) and for every wallet:

    payments (recharge) - deductions (deduction + standing_charge) - refunds + other (reversal + adjustment)
        == closing balance - opening balance

Opening and closing balances come from the journal (postings with event time before the day's start / end).
What makes the identity a check rather than arithmetic is what it is tied to:

- the wallet's materialised balance (``ledger_accounts.balance_micros``) must equal opening + the day + every
  posting after the day: a balance changed without a posting, or a posting changed without its balance, breaks it;
- the ledger audit (``store.ledger.audit``): every entry sums to zero, every balance equals its postings;
- every rated reading's charge (``readings.amount_micros``) must equal what its entry took from the wallet;
- meter-side meters: the purchase count and remaining amount each meter last reported against the platform's
  (``services.meterside``), and the reconciliation alarms raised that day.

Amounts are kept in micros and shown to the fen. Every discrepancy names its subject (wallet, entry, reading,
meter). The report is read-only: nothing here changes money.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, and_, case, func, select

from powergate.domain.money import format_decimal
from powergate.services import meterside
from powergate.store import ledger as ledger_store
from powergate.store.tables import ledger_accounts, ledger_entries, ledger_postings, meters, readings
from powergate.store.tables_structure import accounts, sites

NO_SITE = "(no site)"
MAX_LISTED = 1_000
"""Bound on the discrepancies of one kind listed by name (the count is always exact)."""

PAYMENT_KINDS = ("recharge",)
DEDUCTION_KINDS = ("deduction", "standing_charge")
REFUND_KINDS = ("refund",)
OTHER_KINDS = ("reversal", "adjustment")


@dataclass(frozen=True, slots=True)
class Discrepancy:
    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class Flow:
    """One wallet's (or one site's) day; all micros. Deductions and refunds are positive amounts taken out."""

    subject: str
    site: str
    opening_micros: int = 0
    payments_micros: int = 0
    deductions_micros: int = 0
    refunds_micros: int = 0
    other_micros: int = 0
    closing_micros: int = 0

    @property
    def explained_micros(self) -> int:
        return self.payments_micros - self.deductions_micros - self.refunds_micros + self.other_micros

    @property
    def balanced(self) -> bool:
        return self.explained_micros == self.closing_micros - self.opening_micros

    def plus(self, other: Flow) -> Flow:
        return Flow(
            self.subject,
            self.site,
            self.opening_micros + other.opening_micros,
            self.payments_micros + other.payments_micros,
            self.deductions_micros + other.deductions_micros,
            self.refunds_micros + other.refunds_micros,
            self.other_micros + other.other_micros,
            self.closing_micros + other.closing_micros,
        )


@dataclass(frozen=True, slots=True)
class MeterSideCheck:
    meter_id: str
    allocated_purchase_count: int
    mirrored_purchase_count: int | None
    platform_view_micros: int | None
    mirrored_micros: int | None


@dataclass(frozen=True, slots=True)
class Report:
    day: dt.date
    wallets: list[Flow]
    sites: list[Flow]
    meter_side: list[MeterSideCheck]
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


@dataclass(frozen=True, slots=True)
class _Wallet:
    account_id: int
    code: str
    site: str
    zone: str
    balance_micros: int


def day_window(day: dt.date, zone: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of ``day`` in ``zone``, in UTC (23 or 25 hours long across a daylight-saving change)."""
    tz = ZoneInfo(zone)
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def reconcile(
    conn: Connection, day: dt.date, zone: str, *, tolerance_micros: int = meterside.DEFAULT_TOLERANCE_MICROS
) -> Report:
    """The reconciliation of ``day``. ``zone`` is the time zone of wallets that belong to no site."""
    wallets = _wallets(conn, zone)
    problems = [Discrepancy(p.subject, p.message) for p in ledger_store.audit(conn)]
    flows: list[Flow] = []
    for wallet_zone in sorted({w.zone for w in wallets}):
        group = [w for w in wallets if w.zone == wallet_zone]
        found, mismatched = _flows(conn, group, day_window(day, wallet_zone))
        flows.extend(found)
        problems.extend(mismatched)
    flows.sort(key=lambda f: (f.site, f.subject))
    problems.extend(Discrepancy(f.subject, _unbalanced(f)) for f in flows if not f.balanced)
    for wallet_zone in sorted({w.zone for w in wallets}):
        problems.extend(
            _reading_charges(conn, day_window(day, wallet_zone), [w for w in wallets if w.zone == wallet_zone])
        )
    checks, meter_problems = _meter_side(conn, day, tolerance_micros)
    problems.extend(meter_problems)
    return Report(day, flows, _by_site(flows), checks, problems)


def _wallets(conn: Connection, default_zone: str) -> list[_Wallet]:
    la = ledger_accounts.c
    rows = conn.execute(
        select(la.id, la.code, sites.c.name, sites.c.timezone, la.balance_micros)
        .outerjoin(accounts, accounts.c.wallet_account_id == la.id)
        .outerjoin(sites, sites.c.id == accounts.c.site_id)
        .where(la.kind == "wallet")
        .order_by(la.code)
    )
    return [_Wallet(int(r[0]), r[1], r[2] or NO_SITE, r[3] or default_zone, int(r[4])) for r in rows]


def _kind_sum(kinds: tuple[str, ...], start: dt.datetime, end: dt.datetime) -> ColumnElement[int]:
    e = ledger_entries.c
    inside = and_(e.kind.in_(kinds), e.event_at >= start, e.event_at < end)
    return func.coalesce(func.sum(case((inside, ledger_postings.c.amount_micros), else_=0)), 0)


def _flows(
    conn: Connection, wallets: list[_Wallet], window: tuple[dt.datetime, dt.datetime]
) -> tuple[list[Flow], list[Discrepancy]]:
    start, end = window
    e, p = ledger_entries.c, ledger_postings.c
    columns = [
        func.coalesce(func.sum(case((e.event_at < start, p.amount_micros), else_=0)), 0),
        _kind_sum(PAYMENT_KINDS, start, end),
        _kind_sum(DEDUCTION_KINDS, start, end),
        _kind_sum(REFUND_KINDS, start, end),
        _kind_sum(OTHER_KINDS, start, end),
        func.coalesce(func.sum(case((e.event_at < end, p.amount_micros), else_=0)), 0),
        func.coalesce(func.sum(p.amount_micros), 0),
    ]
    by_id = {w.account_id: w for w in wallets}
    sums: dict[int, list[int]] = {}
    ids = list(by_id)
    for chunk_start in range(0, len(ids), ledger_store.KEY_CHUNK):
        chunk = ids[chunk_start : chunk_start + ledger_store.KEY_CHUNK]
        query = (
            select(p.account_id, *columns)
            .join(ledger_entries, ledger_entries.c.id == p.entry_id)
            .where(p.account_id.in_(chunk))
            .group_by(p.account_id)
        )
        for row in conn.execute(query):
            sums[int(row[0])] = [int(v) for v in row[1:]]
    flows, problems = [], []
    for account_id, wallet in by_id.items():
        opening, paid, deducted, refunded, other, closing, total = sums.get(account_id, [0] * 7)
        flows.append(Flow(wallet.code, wallet.site, opening, paid, -deducted, -refunded, other, closing))
        if total != wallet.balance_micros:
            problems.append(
                Discrepancy(
                    wallet.code,
                    f"stored balance {_money(wallet.balance_micros)} but the journal gives {_money(total)} "
                    f"(difference {wallet.balance_micros - total} micros)",
                )
            )
    return flows, problems


def _reading_charges(
    conn: Connection, window: tuple[dt.datetime, dt.datetime], wallets: list[_Wallet]
) -> list[Discrepancy]:
    """Every rated reading of the day charged its wallet exactly its amount."""
    start, end = window
    r, p, e = readings.c, ledger_postings.c, ledger_entries.c
    wallet_ids = {w.account_id for w in wallets}
    query = (
        select(r.id, e.idempotency_key, r.amount_micros, p.amount_micros, p.account_id)
        .join(ledger_entries, e.id == r.entry_id)
        .join(meters, meters.c.id == r.meter_id)
        .join(ledger_postings, and_(p.entry_id == e.id, p.account_id == meters.c.wallet_account_id))
        .where(e.event_at >= start, e.event_at < end, r.amount_micros != -p.amount_micros)
        .limit(MAX_LISTED)
    )
    return [
        Discrepancy(
            f"reading {reading_id} (entry {key})",
            f"charged {_money(int(charged))} but its entry takes {_money(-int(taken))} from the wallet",
        )
        for reading_id, key, charged, taken, account_id in conn.execute(query)
        if int(account_id) in wallet_ids
    ]


def _meter_side(
    conn: Connection, day: dt.date, tolerance_micros: int
) -> tuple[list[MeterSideCheck], list[Discrepancy]]:
    checks, problems = [], []
    for state in meterside.states(conn):
        allocated = state.next_purchase_count - 1
        count = state.mirrored_purchase_count
        view = on_meter = None
        subject = f"meter:{state.meter_id}"
        if count is None:
            problems.append(Discrepancy(subject, "never reported its purchase count"))
        elif count < state.last_pushed_purchase_count or count > allocated:
            problems.append(
                Discrepancy(
                    subject,
                    f"purchase count {count} on the meter; the platform allocated {allocated} and saw "
                    f"{state.last_pushed_purchase_count}",
                )
            )
        elif state.mirrored_remaining_micros is not None:
            view = meterside.platform_view_micros(conn, state.meter_id, count)
            on_meter = state.mirrored_remaining_micros - (state.mirrored_overdraft_micros or 0)
            if abs(on_meter - view) > tolerance_micros:
                problems.append(
                    Discrepancy(
                        subject,
                        f"remaining amount {_money(on_meter)} on the meter, platform's view {_money(view)} "
                        f"(tolerance {_money(tolerance_micros)})",
                    )
                )
        checks.append(MeterSideCheck(state.meter_id, allocated, count, view, on_meter))
    for alarm in meterside.alarms_of(conn, day, limit=MAX_LISTED):
        problems.append(Discrepancy(alarm.subject, f"alarm {alarm.kind}: {alarm.message}"))
    return checks, problems


def _by_site(flows: Iterable[Flow]) -> list[Flow]:
    totals: dict[str, Flow] = {}
    for flow in flows:
        totals[flow.site] = totals.get(flow.site, Flow(f"site {flow.site}", flow.site)).plus(flow)
    return [totals[name] for name in sorted(totals)]


def _unbalanced(flow: Flow) -> str:
    change = flow.closing_micros - flow.opening_micros
    return (
        f"payments - deductions - refunds + other = {_money(flow.explained_micros)} but the balance changed by "
        f"{_money(change)} (difference {flow.explained_micros - change} micros)"
    )


def _money(micros: int) -> str:
    """Shown to the fen; exact micros are given alongside wherever a difference is reported."""
    return format_decimal(micros)


def render(report: Report) -> str:
    """The report as text: per site, per wallet, meter-side checks, then every discrepancy."""
    header = f"{'subject':<28} " + " ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [f"Reconciliation for {report.day.isoformat()}", "", "Per site", header]
    lines.extend(_flow_line(flow) for flow in report.sites)
    lines.extend(["", "Per wallet", header])
    lines.extend(_flow_line(flow) for flow in report.wallets)
    if report.meter_side:
        lines.extend(["", "Meter-side meters (purchase count allocated / on meter; remaining platform / meter)"])
        lines.extend(
            f"{c.meter_id:<28} {c.allocated_purchase_count:>6} / {c.mirrored_purchase_count!s:<6} "
            f"{_optional(c.platform_view_micros):>12} / {_optional(c.mirrored_micros)}"
            for c in report.meter_side
        )
    lines.append("")
    for problem in report.discrepancies:
        lines.append(f"DISCREPANCY {problem.subject}: {problem.message}")
    verdict = (
        "ok: every wallet and site ties out exactly"
        if report.ok
        else f"FAILED: {len(report.discrepancies)} discrepancies"
    )
    lines.append(f"reconciliation {verdict}")
    return "\n".join(lines)


COLUMNS = (("opening", 12), ("payments", 12), ("deductions", 12), ("refunds", 12), ("other", 10), ("closing", 12))


def _flow_line(flow: Flow) -> str:
    values = (
        flow.opening_micros,
        flow.payments_micros,
        flow.deductions_micros,
        flow.refunds_micros,
        flow.other_micros,
        flow.closing_micros,
    )
    widths = (width for _, width in COLUMNS)
    cells = " ".join(f"{_money(v):>{w}}" for v, w in zip(values, widths, strict=True))
    return f"{flow.subject[:28]:<28} {cells}"


def _optional(micros: int | None) -> str:
    return "-" if micros is None else _money(micros)
