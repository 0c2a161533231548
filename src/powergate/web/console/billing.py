"""Console: property billing (物业计费). Per site: the custom charge items, the apportionment rules with their
versions and computed months (each share with how it was computed), the bills with their state transitions
(confirm, issue, void, pay at the cashier), the arrears list, and Excel downloads of bills and arrears.

Reads for every staff role; operators (and admins) create charge items, run a rule's month and draft post-paid
bills; finance (and admins) move bills along and take payment. Services: ``powergate.services.billing`` (which
audits every change) and ``billing_queries`` (organisation scoping). Forms that move money or compute a month
carry ``idempotency_key`` and run through ``idempotent``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection

from powergate.domain.billing import Basis, Frequency, Schedule
from powergate.domain.money import parse_micros
from powergate.services import billing, billing_queries, queries
from powergate.services.accounts import Rejected
from powergate.services.reports import organisation_sites
from powergate.store.tables_billing import BILL_STATES
from powergate.web.api._common import IdPath
from powergate.web.api.billing import _export
from powergate.web.console._batch_render import render_b
from powergate.web.console._common_b import (
    Staff,
    choice_param,
    date_param,
    form_text,
    int_param,
    month_param,
    read,
    with_engine,
)
from powergate.web.deps import Principal, Role, get_engine, now
from powergate.web.i18n import language
from powergate.web.idempotency import idempotent

router = APIRouter(prefix="/billing", tags=["console"])

OPERATORS = (Role.ADMIN, Role.OPERATOR)
FINANCE = (Role.ADMIN, Role.FINANCE)
STEPS = {"confirm": billing.confirm_bill, "issue": billing.issue_bill, "void": billing.void_bill}
NEXT_STEPS = {
    "draft": ("confirm", "void"),
    "confirmed": ("issue", "void"),
    "issued": ("pay", "void"),
    "overdue": ("pay", "void"),
}


def _deny(who: Principal, roles: tuple[Role, ...]) -> None:
    if who.role not in roles:
        names = " or ".join(r.value for r in roles)
        raise HTTPException(403, detail=f"this needs the role {names}; you are {who.role.value}")


def _back(site_id: int | None, **params: str) -> RedirectResponse:
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items() if v)
    base = f"/console/billing?site_id={site_id}" if site_id else "/console/billing?"
    return RedirectResponse(f"{base}&{query}" if query else base, status_code=303)


@router.get("", response_class=HTMLResponse)
async def billing_page(request: Request, who: Staff) -> Response:
    q = request.query_params
    state = choice_param(q.get("state"), "state", BILL_STATES)
    wanted_site = int_param(q.get("site_id"), "site_id", minimum=1)
    month = month_param(q.get("month"), "month")

    def load(conn: Connection) -> dict[str, Any]:
        sites = organisation_sites(conn, who.organisation_id)
        site_id = wanted_site if wanted_site is not None else (sites[0].id if sites else None)
        if site_id is not None and queries.get_site(conn, queries.Scope(who.organisation_id), site_id) is None:
            raise HTTPException(404, detail=f"site {site_id} not found")
        rules = billing_queries.rule_lines(conn, who.organisation_id, site_id) if site_id else []
        months = {}
        for rule in rules:
            shown = month or (rule.runs[0].month if rule.runs else None)
            if shown is not None:
                months[rule.id] = billing_queries.month_result(conn, who.organisation_id, rule.id, shown)
        return {
            "sites": sites,
            "site_id": site_id,
            "items": billing_queries.charge_item_lines(conn, who.organisation_id, site_id) if site_id else [],
            "rules": rules,
            "months": months,
            "bills": billing_queries.org_bills(conn, who.organisation_id, site_id=site_id, state=state, limit=300)
            if site_id
            else [],
            "arrears": billing_queries.org_arrears(conn, who.organisation_id, site_id) if site_id else [],
        }

    data = await read(request, load)
    return render_b(
        request, "billing.html", who, state=state, states=BILL_STATES, next_steps=NEXT_STEPS,
        is_operator=who.role in OPERATORS, is_finance=who.role in FINANCE, error=q.get("error"),
        done=q.get("done"), today=now(request).date(), **data,
    )  # fmt: skip


@router.get("/bills/{bill_no}", response_class=HTMLResponse)
async def bill_page(request: Request, who: Staff, bill_no: str) -> Response:
    def load(conn: Connection) -> billing.Bill | None:
        return billing_queries.org_bill(conn, who.organisation_id, bill_no[:40])

    bill = await read(request, load)
    if bill is None:
        raise HTTPException(404, detail=f"bill {bill_no[:40]} not found")
    return render_b(
        request, "billing_bill.html", who, bill=bill, next_steps=NEXT_STEPS.get(bill.state, ()),
        is_finance=who.role in FINANCE, error=request.query_params.get("error"),
    )  # fmt: skip


def _money(form: Any, name: str, decimals: int = 2) -> int:
    try:
        return parse_micros(form_text(form, name, 24).strip() or "0", field=name, max_decimals=decimals)
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None


@router.post("/charge-items")
async def create_charge_item(request: Request, who: Staff) -> Response:
    _deny(who, OPERATORS)
    form = await request.form()
    site_id = int_param(form_text(form, "site_id", 40), "site_id", minimum=1)
    start = date_param(form_text(form, "start_on", 40), "start_on")
    if site_id is None or start is None:
        raise HTTPException(422, detail="site_id and start_on are required")
    basis = choice_param(form_text(form, "basis", 8), "basis", tuple(b.value for b in Basis)) or "fixed"
    frequency = choice_param(form_text(form, "frequency", 12), "frequency", tuple(f.value for f in Frequency))
    spec = billing.ChargeItemSpec(
        form_text(form, "code", 32).strip(),
        form_text(form, "name", 120).strip(),
        Basis(basis),
        _money(form, "rate", 4),
        Schedule(
            Frequency(frequency or "monthly"),
            start,
            int_param(form_text(form, "due_day", 40), "due_day", minimum=1, maximum=28) or 1,
            date_param(form_text(form, "end_on", 40), "end_on"),
        ),
        choice_param(form_text(form, "collection", 8), "collection", ("deduct", "bill")) or "deduct",
    )
    at = now(request)

    def work(engine: Any) -> Rejected | int:
        with engine.begin() as conn:
            if queries.get_site(conn, queries.Scope(who.organisation_id), site_id) is None:
                raise HTTPException(404, detail=f"site {site_id} not found")
            return billing.create_charge_item(conn, site_id, spec, actor=who.actor, now=at)

    made = await with_engine(request, work)
    if isinstance(made, Rejected):
        return _back(site_id, error=str(made))
    return _back(site_id, done="item")


@router.post("/rules/{rule_id}/run")
async def run_month(request: Request, who: Staff, rule_id: IdPath) -> Response:
    _deny(who, OPERATORS)
    form = await request.form()
    month = month_param(form_text(form, "month", 7), "month")
    if month is None:
        raise HTTPException(422, detail="month: expected a month like 2026-11")
    at = now(request)
    engine = get_engine(request)

    def check(conn: Connection) -> int | None:
        return billing_queries.rule_site(conn, who.organisation_id, rule_id)

    site_id = await read(request, check)
    if site_id is None:
        raise HTTPException(404, detail=f"rule {rule_id} not found")

    def work(_: Any) -> tuple[int, Any]:
        done = billing.run_apportionment(engine, rule_id, month, actor=who.actor, now=at)
        return (422, {"error": str(done)}) if isinstance(done, Rejected) else (200, {"month": f"{month:%Y-%m}"})

    async def run() -> tuple[int, Any]:
        return await with_engine(request, work)

    def show(status: int, body: Any) -> Response:
        if status == 200:
            return _back(site_id, month=body["month"], done="apportioned")
        return _back(site_id, error=body.get("error", ""))

    return await idempotent(request, who, run, render=show)


@router.post("/drafts")
async def draft(request: Request, who: Staff) -> Response:
    _deny(who, OPERATORS)
    form = await request.form()
    site_id = int_param(form_text(form, "site_id", 40), "site_id", minimum=1)
    first, last = date_param(form_text(form, "first", 40), "first"), date_param(form_text(form, "last", 40), "last")
    if site_id is None or first is None or last is None:
        raise HTTPException(422, detail="site_id, first and last are required")
    at = now(request)
    engine = get_engine(request)

    def work(_: Any) -> tuple[int, Any]:
        with engine.connect() as conn:
            if queries.get_site(conn, queries.Scope(who.organisation_id), site_id) is None:
                return 404, {"error": f"site {site_id} not found"}
        done = billing.draft_postpaid_bills(engine, site_id, first, last, actor=who.actor, now=at)
        if isinstance(done, Rejected):
            return 422, {"error": str(done)}
        return 200, {"bills": list(done.bills), "problems": list(done.problems)}

    async def run() -> tuple[int, Any]:
        return await with_engine(request, work)

    def show(status: int, body: Any) -> Response:
        if status == 404:
            raise HTTPException(404, detail=body["error"])
        if status != 200:
            return _back(site_id, error=body.get("error", ""))
        return _back(site_id, done="drafted", error="; ".join(body["problems"]))

    return await idempotent(request, who, run, render=show)


@router.post("/bills/{bill_no}/{step}")
async def move_bill(request: Request, who: Staff, bill_no: str, step: str) -> Response:
    _deny(who, FINANCE)
    if step not in (*STEPS, "pay"):
        raise HTTPException(404, detail=f"no step {step[:20]!r}")
    form = await request.form()
    reason = form_text(form, "reason", 2_000).strip()
    receipt = form_text(form, "receipt_no", 64).strip()
    method = choice_param(form_text(form, "method", 8) or "cash", "method", ("cash", "card")) or "cash"
    at = now(request)
    engine = get_engine(request)
    bill_no = bill_no[:40]

    def work(_: Any) -> tuple[int, Any]:
        with engine.begin() as conn:
            if billing_queries.org_bill(conn, who.organisation_id, bill_no) is None:
                return 404, {"error": f"bill {bill_no} not found"}
            if step != "pay":
                if not reason:
                    return 422, {"error": "reason: why must be given (audited)"}
                done: Any = STEPS[step](conn, bill_no, actor=who.actor, reason=reason, now=at)
        if step == "pay":
            if not receipt:
                return 422, {"error": "receipt_no: the receipt number is required"}
            done = billing_queries.pay_bill_at_cashier(
                engine, who.organisation_id, bill_no, receipt, method, who.actor, at
            )
        return (422, {"error": str(done)}) if isinstance(done, Rejected) else (200, {"state": done.state})

    async def run() -> tuple[int, Any]:
        return await with_engine(request, work)

    def show(status: int, body: Any) -> Response:
        if status == 404:
            raise HTTPException(404, detail=body["error"])
        target = f"/console/billing/bills/{quote(bill_no)}"
        if status != 200:
            target += f"?error={quote(body.get('error', ''))}"
        return RedirectResponse(target, status_code=303)

    return await idempotent(request, who, run, render=show)


@router.get("/export/{what}.xlsx")
async def export(request: Request, who: Staff, what: str) -> Response:
    """Excel: ``bills`` (of the site, in a state) or ``arrears``."""
    if what not in ("bills", "arrears"):
        raise HTTPException(404, detail=f"no export {what[:20]!r}")
    q = request.query_params
    site_id = int_param(q.get("site_id"), "site_id", minimum=1)
    state = choice_param(q.get("state"), "state", BILL_STATES)

    def load(conn: Connection) -> list[billing.Bill]:
        if site_id is not None and queries.get_site(conn, queries.Scope(who.organisation_id), site_id) is None:
            raise HTTPException(404, detail=f"site {site_id} not found")
        if what == "arrears":
            return billing_queries.org_arrears(conn, who.organisation_id, site_id)
        return billing_queries.org_bills(conn, who.organisation_id, site_id=site_id, state=state)

    found = await read(request, load)
    stamp = now(request).date().isoformat()
    return _export(found, language(request), what, f"{what}-{stamp}.xlsx")
