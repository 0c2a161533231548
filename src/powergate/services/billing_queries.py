"""Organisation-scoped reads for the property billing screens (API and console): sites, charge items,
apportionment rules with their versions and months, bills and arrears, plus paying a bill at the cashier.

``powergate.services.billing`` computes and writes; this module only decides what an organisation (or a
tenant, through ``account_id``) may see: everything is filtered by ``sites.organisation_id``, so an id of
another organisation reads as missing (the web answers 404). Shares carry the text of how they were computed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from powergate.domain.money import format_money
from powergate.services import billing, payments, queries
from powergate.services.accounts import Rejected
from powergate.services.queries import Scope
from powergate.services.reports import organisation_sites
from powergate.store.tables import ledger_accounts
from powergate.store.tables_billing import (
    apportion_rule_versions,
    apportion_rules,
    apportion_runs,
    apportion_shares,
    bills,
    charge_items,
)
from powergate.store.tables_structure import accounts

MAX_ROWS = 1_000


# --- charge items ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChargeItemLine:
    id: int
    site_id: int
    code: str
    name: str
    basis: str
    rate_micros: int
    frequency: str
    start_on: dt.date
    due_day: int
    end_on: dt.date | None
    collection: str
    scope: str
    scope_ids: list[int]
    active: bool


def charge_item_lines(conn: Connection, organisation_id: int, site_id: int | None = None) -> list[ChargeItemLine]:
    c = charge_items.c
    query = select(charge_items).where(c.site_id.in_(queries.site_ids(Scope(organisation_id))))
    if site_id is not None:
        query = query.where(c.site_id == site_id)
    return [
        ChargeItemLine(
            int(r.id),
            int(r.site_id),
            str(r.code),
            str(r.name),
            str(r.basis),
            int(r.rate_micros),
            str(r.frequency),
            r.start_on,
            int(r.due_day),
            r.end_on,
            str(r.collection),
            str(r.scope),
            json.loads(r.scope_ids),
            bool(r.active),
        )
        for r in conn.execute(query.order_by(c.site_id, c.code).limit(MAX_ROWS))
    ]


# --- apportionment -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionLine:
    version: int
    valid_from: dt.date
    master_meter_id: str
    source: str
    sub_meters: list[str]
    method: str
    participants: list[tuple[int, int]]
    price_micros_per_kwh: int | None
    collection: str
    created_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunLine:
    month: dt.date
    version: int
    master_wh: int
    sub_meters_wh: int
    energy_wh: int
    amount_micros: int
    weight_total: int
    created_by: str


@dataclass(frozen=True, slots=True)
class RuleLine:
    id: int
    site_id: int
    code: str
    name: str
    versions: list[VersionLine]
    runs: list[RunLine]

    @property
    def latest(self) -> VersionLine:
        return self.versions[-1]


def _version(r: Any) -> VersionLine:
    return VersionLine(
        int(r.version), r.valid_from, str(r.master_meter_id), str(r.source), list(json.loads(r.sub_meters)),
        str(r.method), [(int(a), int(p)) for a, p in json.loads(r.participants)],
        None if r.price_micros_per_kwh is None else int(r.price_micros_per_kwh), str(r.collection),
        str(r.created_by), str(r.reason),
    )  # fmt: skip


def rule_lines(
    conn: Connection, organisation_id: int, site_id: int | None = None, rule_id: int | None = None
) -> list[RuleLine]:
    query = select(apportion_rules).where(apportion_rules.c.site_id.in_(queries.site_ids(Scope(organisation_id))))
    if site_id is not None:
        query = query.where(apportion_rules.c.site_id == site_id)
    if rule_id is not None:
        query = query.where(apportion_rules.c.id == rule_id)
    found = []
    for r in conn.execute(query.order_by(apportion_rules.c.site_id, apportion_rules.c.code).limit(MAX_ROWS)):
        v = apportion_rule_versions.c
        versions = [
            _version(row)
            for row in conn.execute(select(apportion_rule_versions).where(v.rule_id == r.id).order_by(v.version))
        ]
        u = apportion_runs.c
        runs = [
            RunLine(
                row.month,
                int(row.version),
                int(row.master_wh),
                int(row.sub_meters_wh),
                int(row.energy_wh),
                int(row.amount_micros),
                int(row.weight_total),
                str(row.created_by),
            )
            for row in conn.execute(select(apportion_runs).where(u.rule_id == r.id).order_by(u.month.desc()).limit(36))
        ]
        found.append(RuleLine(int(r.id), int(r.site_id), str(r.code), str(r.name), versions, runs))
    return found


def rule_site(conn: Connection, organisation_id: int, rule_id: int) -> int | None:
    """The rule's site, if the rule belongs to the organisation."""
    query = select(apportion_rules.c.site_id).where(
        apportion_rules.c.id == rule_id, apportion_rules.c.site_id.in_(queries.site_ids(Scope(organisation_id)))
    )
    found = conn.execute(query).scalar()
    return None if found is None else int(found)


@dataclass(frozen=True, slots=True)
class ShareLine:
    account_id: int
    account_no: str
    weight: int
    energy_wh: int
    amount_micros: int
    how: str
    """How the share was computed, in words and numbers."""


@dataclass(frozen=True, slots=True)
class MonthResult:
    rule_id: int
    run: RunLine
    method: str
    source: str
    shares: list[ShareLine]


def explain(method: str, source: str, run: RunLine, weight: int, energy_wh: int, amount_micros: int) -> str:
    """The share's computation, e.g. "usage 120.00 kWh of 600.00 kWh; shared 80.00 kWh (remainder: master 1000.00
    kWh - sub-meters 920.00 kWh) costing ¥64.00 -> 16.00 kWh, ¥12.80"."""
    unit = {"ratio": "parts", "area": "m² x 100", "usage": "Wh"}.get(method, "")
    what = (
        f"remainder: master {run.master_wh / 1000:.2f} kWh - sub-meters {run.sub_meters_wh / 1000:.2f} kWh"
        if source == "remainder"
        else f"master meter total {run.master_wh / 1000:.2f} kWh"
    )
    return (
        f"{method} {weight}/{run.weight_total} {unit}; shared {run.energy_wh / 1000:.2f} kWh ({what}) costing "
        f"{format_money(run.amount_micros)} -> {energy_wh / 1000:.2f} kWh, {format_money(amount_micros)}"
    )


def month_result(
    conn: Connection, organisation_id: int, rule_id: int, month: dt.date, account_id: int | None = None
) -> MonthResult | None:
    """A rule's computed month with each share and how it was computed (a tenant: only their share)."""
    if rule_site(conn, organisation_id, rule_id) is None:
        return None
    run = conn.execute(
        select(apportion_runs).where(
            apportion_runs.c.rule_id == rule_id, apportion_runs.c.month == month.replace(day=1)
        )
    ).first()
    if run is None:
        return None
    line = RunLine(
        run.month, int(run.version), int(run.master_wh), int(run.sub_meters_wh), int(run.energy_wh),
        int(run.amount_micros), int(run.weight_total), str(run.created_by),
    )  # fmt: skip
    version = conn.execute(
        select(apportion_rule_versions.c.method, apportion_rule_versions.c.source).where(
            apportion_rule_versions.c.rule_id == rule_id, apportion_rule_versions.c.version == run.version
        )
    ).one()
    s = apportion_shares.c
    query = (
        select(s.account_id, accounts.c.account_no, s.weight, s.energy_wh, s.amount_micros)
        .join(accounts, accounts.c.id == s.account_id)
        .where(s.run_id == run.id)
        .order_by(accounts.c.account_no)
    )
    if account_id is not None:
        query = query.where(s.account_id == account_id)
    shares = [
        ShareLine(
            int(a),
            str(no),
            int(w),
            int(e),
            int(m),
            explain(str(version.method), str(version.source), line, int(w), int(e), int(m)),
        )
        for a, no, w, e, m in conn.execute(query)
    ]
    return MonthResult(rule_id, line, str(version.method), str(version.source), shares)


def tenant_shares(conn: Connection, account_id: int) -> list[dict[str, Any]]:
    """A tenant's shares, newest first, each with how it was computed."""
    found = []
    for row in billing.account_shares(conn, account_id):
        run = RunLine(
            row["month"], 0, int(row["master_wh"]), int(row["sub_meters_wh"]), int(row["shared_wh"]),
            int(row["shared_micros"]), int(row["weight_total"]), "",
        )  # fmt: skip
        how = explain(
            str(row["method"]), str(row["source"]), run, int(row["weight"]), int(row["energy_wh"]),
            int(row["amount_micros"]),
        )  # fmt: skip
        found.append({**row, "how": how})
    return found


# --- bills -------------------------------------------------------------------------------------------------


def org_bill(
    conn: Connection, organisation_id: int, bill_no: str, account_id: int | None = None
) -> billing.Bill | None:
    """The bill if it belongs to the organisation (and, for a tenant, to their account)."""
    query = select(bills.c.id).where(
        bills.c.bill_no == bill_no, bills.c.site_id.in_(queries.site_ids(Scope(organisation_id)))
    )
    if account_id is not None:
        query = query.where(bills.c.account_id == account_id)
    if conn.execute(query).first() is None:
        return None
    return billing.get_bill(conn, bill_no)


def org_bills(
    conn: Connection,
    organisation_id: int,
    *,
    site_id: int | None = None,
    state: str | None = None,
    account_id: int | None = None,
    limit: int = 500,
) -> list[billing.Bill]:
    query = select(bills.c.bill_no).where(bills.c.site_id.in_(queries.site_ids(Scope(organisation_id))))
    if site_id is not None:
        query = query.where(bills.c.site_id == site_id)
    if state is not None:
        query = query.where(bills.c.state == state)
    if account_id is not None:
        query = query.where(bills.c.account_id == account_id)
    numbers = conn.execute(query.order_by(bills.c.period_first.desc(), bills.c.id).limit(limit)).scalars().all()
    return [b for b in (billing.get_bill(conn, str(n)) for n in numbers) if b is not None]


def org_arrears(conn: Connection, organisation_id: int, site_id: int | None = None) -> list[billing.Bill]:
    """Issued and overdue bills not yet paid, oldest due first."""
    found: list[billing.Bill] = []
    for site in organisation_sites(conn, organisation_id):
        if site_id is None or site.id == site_id:
            found.extend(billing.arrears(conn, site.id))
    return sorted(found, key=lambda b: (b.due_on or dt.date.max, b.id))


def pay_bill_at_cashier(
    engine: Engine, organisation_id: int, bill_no: str, receipt_no: str, method: str, actor: str, now: dt.datetime
) -> billing.Bill | Rejected:
    """Pay an issued or overdue bill at the cashier: an order for the bill's amount (to the fen) credited to the
    wallet, attached to the bill, which ``settle_paid_bills`` then marks paid, posting its unposted lines. The
    order number is ``PAY-<bill no>``, so paying again is refused rather than charged twice."""
    from powergate.payments.cashier import Cashier

    with engine.connect() as conn:
        bill = org_bill(conn, organisation_id, bill_no)
        if bill is None:
            return Rejected("bill_no", f"no bill {bill_no!r}")
        wallet_code = str(
            conn.execute(
                select(ledger_accounts.c.code)
                .join(accounts, accounts.c.wallet_account_id == ledger_accounts.c.id)
                .where(accounts.c.id == bill.account_id)
            ).scalar_one()
        )
    if bill.state not in ("issued", "overdue"):
        return Rejected("state", f"bill {bill_no} is {bill.state}; only an issued or overdue bill can be paid")
    if bill.amount_fen <= 0:
        return Rejected("amount", f"bill {bill_no} has nothing to pay")
    order_no = f"PAY-{bill_no}"
    order = payments.NewOrder(
        wallet_code,
        bill.amount_fen,
        "cashier",
        method,
        description=f"bill {bill_no}",
        order_no=order_no,
        operator=actor,
    )
    settled = payments.pay_at_cashier(engine, {"cashier": Cashier()}, order, receipt_no, None, now)
    if isinstance(settled, payments.Refused):
        return Rejected(settled.field, settled.message)
    if settled.verdict is payments.Verdict.REJECTED:
        return Rejected("receipt_no", settled.reason)
    with engine.begin() as conn:
        attached = billing.attach_order(conn, bill_no, order_no, actor=actor, now=now)
    if isinstance(attached, Rejected):
        return attached
    billing.settle_paid_bills(engine, now)
    with engine.connect() as conn:
        paid = billing.get_bill(conn, bill_no)
    assert paid is not None
    return paid
