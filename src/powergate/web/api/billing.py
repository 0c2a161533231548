"""``/api/v1/billing``: property billing (issue 9) — custom charge items, common-area apportionment rules (with
versions and month runs whose shares say how they were computed), post-paid bills and their life cycle,
payment of a bill at the cashier, Excel exports of bills and of the arrears list.

Roles: every staff role reads; operators (and admins) create charge items and rules, run charges,
apportionment months and post-paid drafts; finance (and admins) confirm, issue, void and take payment of bills.
A tenant reads only their own bills and shares. Everything is scoped to the caller's organisation through the
site: another organisation's site, rule or bill is 404. Runs and payments are idempotent (``Idempotency-Key``)
on top of the services' own keys (a month is computed once; a bill's order is ``PAY-<bill no>``).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from powergate.domain.billing import Basis, Frequency, Method, Schedule, Source
from powergate.services import billing, billing_queries, queries
from powergate.services.accounts import Rejected
from powergate.store.tables_billing import BILL_STATES
from powergate.web.api._common import (
    ERRORS,
    NO_NUL,
    Anyone,
    DbEngine,
    Finance,
    IdPath,
    Model,
    Now,
    Operator,
    Reason,
    StaffReader,
    not_found,
    ok_json,
    one_of,
    problem,
    scope_of,
)
from powergate.web.api._models import mirror
from powergate.web.deps import Principal, Role
from powergate.web.idempotency import idempotent

router = APIRouter(prefix="/billing", tags=["billing"], responses=ERRORS)
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_ID = 2**63 - 1
Code = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=NO_NUL)]
BillNo = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]
SiteQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Lang = Annotated[Literal["zh-CN", "en"], Query()]


def _refused(done: Rejected) -> HTTPException:
    status = 409 if done.field == "state" or "exists" in done.message or "already" in done.message else 422
    return problem(done.field, done.message, status)


def _site(engine: Any, who: Principal, site_id: int) -> None:
    with engine.connect() as conn:
        if queries.get_site(conn, scope_of(who), site_id) is None:
            raise not_found("site", site_id)


# --- charge items ------------------------------------------------------------------------------------------


class ChargeItemIn(BaseModel):
    site_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    code: Code
    name: Name
    basis: Basis
    rate_micros: Annotated[int, Field(ge=0, le=billing.MAX_RATE_MICROS)]
    frequency: Frequency
    start_on: dt.date
    due_day: Annotated[int, Field(ge=1, le=28)] = 1
    end_on: dt.date | None = None
    collection: Literal["deduct", "bill"] = "deduct"
    scope: Literal["site", "buildings", "floors", "rooms"] = "site"
    scope_ids: Annotated[list[Annotated[int, Field(ge=1, le=MAX_ID)]], Field(max_length=1_000)] = Field(
        default_factory=list
    )


@mirror(billing_queries.ChargeItemLine)
class ChargeItemOut(Model):
    pass


@router.get("/charge-items", response_model=list[ChargeItemOut])
def list_charge_items(who: StaffReader, engine: DbEngine, site_id: SiteQuery = None) -> list[ChargeItemOut]:
    with engine.connect() as conn:
        lines = billing_queries.charge_item_lines(conn, who.organisation_id, site_id)
    return [ChargeItemOut.model_validate(line) for line in lines]


@router.post("/charge-items", response_model=ChargeItemOut, status_code=201)
def create_charge_item(body: ChargeItemIn, who: Operator, engine: DbEngine, now: Now) -> ChargeItemOut:
    """A custom charge (rent, property fee, ...): fixed per room or per m², once or periodic, deducted or billed."""
    _site(engine, who, body.site_id)
    spec = billing.ChargeItemSpec(
        body.code,
        body.name,
        body.basis,
        body.rate_micros,
        Schedule(body.frequency, body.start_on, body.due_day, body.end_on),
        body.collection,
        body.scope,
        tuple(body.scope_ids),
    )
    with engine.begin() as conn:
        made = billing.create_charge_item(conn, body.site_id, spec, actor=who.actor, now=now)
        if isinstance(made, Rejected):
            raise _refused(made)
        (line,) = [
            i for i in billing_queries.charge_item_lines(conn, who.organisation_id, body.site_id) if i.id == made
        ]
    return ChargeItemOut.model_validate(line)


@mirror(billing.ChargeRun)
class ChargeRunOut(Model):
    pass


class SiteIn(BaseModel):
    site_id: Annotated[int, Field(ge=1, le=MAX_ID)]


@router.post("/charges/run", response_model=ChargeRunOut)
async def run_charges(body: SiteIn, request: Request, who: Operator, engine: DbEngine, now: Now) -> Response:
    """Charge every item of the site that is due by today, once (the worker does this too)."""
    await run_in_threadpool(_site, engine, who, body.site_id)

    def work() -> tuple[int, Any]:
        run = billing.run_charges(engine, now, site_id=body.site_id)
        return 200, ok_json(ChargeRunOut.model_validate(run))

    return await idempotent(request, who, lambda: run_in_threadpool(work))


# --- apportionment -----------------------------------------------------------------------------------------


class Participant(BaseModel):
    account_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    parts: Annotated[int, Field(ge=0, le=1_000_000)] = 1


class VersionIn(BaseModel):
    master_meter_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
    method: Method
    participants: Annotated[list[Participant], Field(min_length=1, max_length=2_000)]
    source: Source = Source.TOTAL
    sub_meters: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]], Field(max_length=500)
    ] = Field(default_factory=list)
    price_micros_per_kwh: Annotated[int | None, Field(ge=0, le=billing.MAX_RATE_MICROS)] = None
    collection: Literal["deduct", "bill"] = "deduct"
    valid_from: dt.date
    reason: Reason

    def version(self) -> billing.RuleVersion:
        return billing.RuleVersion(
            self.master_meter_id,
            self.method,
            tuple((p.account_id, p.parts) for p in self.participants),
            self.source,
            tuple(self.sub_meters),
            self.price_micros_per_kwh,
            self.collection,
        )


class RuleIn(VersionIn):
    site_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    code: Code
    name: Name


@mirror(billing_queries.VersionLine)
class VersionOut(Model):
    pass


@mirror(billing_queries.RunLine)
class RunOut(Model):
    pass


@mirror(billing_queries.RuleLine)
class RuleOut(Model):
    pass


@mirror(billing_queries.ShareLine)
class ShareOut(Model):
    pass


@mirror(billing_queries.MonthResult)
class MonthOut(Model):
    pass


class MonthIn(BaseModel):
    month: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}$")] = Field(description="YYYY-MM")


def _rule_out(conn: Any, who: Principal, rule_id: int) -> RuleOut:
    found = billing_queries.rule_lines(conn, who.organisation_id, rule_id=rule_id)
    if not found:
        raise not_found("rule", rule_id)
    return RuleOut.model_validate(found[0])


@router.get("/rules", response_model=list[RuleOut])
def list_rules(who: StaffReader, engine: DbEngine, site_id: SiteQuery = None) -> list[RuleOut]:
    with engine.connect() as conn:
        lines = billing_queries.rule_lines(conn, who.organisation_id, site_id)
    return [RuleOut.model_validate(line) for line in lines]


@router.get("/rules/{rule_id}", response_model=RuleOut)
def get_rule(rule_id: IdPath, who: StaffReader, engine: DbEngine) -> RuleOut:
    with engine.connect() as conn:
        return _rule_out(conn, who, rule_id)


@router.post("/rules", response_model=RuleOut, status_code=201)
def create_rule(body: RuleIn, who: Operator, engine: DbEngine, now: Now) -> RuleOut:
    """A common-area apportionment rule with its first version (from ``valid_from``)."""
    _site(engine, who, body.site_id)
    with engine.begin() as conn:
        made = billing.create_rule(
            conn, body.site_id, body.code, body.name, body.version(), body.valid_from,
            actor=who.actor, reason=body.reason, now=now,
        )  # fmt: skip
        if isinstance(made, Rejected):
            raise _refused(made)
        return _rule_out(conn, who, made)


@router.post("/rules/{rule_id}/versions", response_model=RuleOut, status_code=201)
def new_rule_version(rule_id: IdPath, body: VersionIn, who: Operator, engine: DbEngine, now: Now) -> RuleOut:
    """A new version of the rule from ``valid_from`` (months already computed keep their version)."""
    with engine.begin() as conn:
        if billing_queries.rule_site(conn, who.organisation_id, rule_id) is None:
            raise not_found("rule", rule_id)
        made = billing.new_rule_version(
            conn, rule_id, body.version(), body.valid_from, actor=who.actor, reason=body.reason, now=now
        )
        if isinstance(made, Rejected):
            raise _refused(made)
        return _rule_out(conn, who, rule_id)


def _month(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(f"{text}-01")
    except ValueError:
        raise problem("month", f"expected YYYY-MM, got {text!r}") from None


def _month_out(engine: Any, who: Principal, rule_id: int, month: dt.date, account_id: int | None) -> MonthOut:
    with engine.connect() as conn:
        found = billing_queries.month_result(conn, who.organisation_id, rule_id, month, account_id)
    if found is None:
        raise not_found("month", f"{month:%Y-%m} of rule {rule_id}")
    return MonthOut.model_validate(found)


@router.post("/rules/{rule_id}/runs", response_model=MonthOut)
async def run_month(
    rule_id: IdPath, body: MonthIn, request: Request, who: Operator, engine: DbEngine, now: Now
) -> Response:
    """Compute and collect the rule's month (once; a second run answers the first result)."""
    month = _month(body.month)

    def check() -> None:
        with engine.connect() as conn:
            if billing_queries.rule_site(conn, who.organisation_id, rule_id) is None:
                raise not_found("rule", rule_id)

    await run_in_threadpool(check)

    def work() -> tuple[int, Any]:
        done = billing.run_apportionment(engine, rule_id, month, actor=who.actor, now=now)
        if isinstance(done, Rejected):
            return 422, {"detail": f"{done.field}: {done.message}"}
        return 200, ok_json(_month_out(engine, who, rule_id, month, None))

    return await idempotent(request, who, lambda: run_in_threadpool(work))


@router.get("/rules/{rule_id}/runs/{month}", response_model=MonthOut)
def get_month(
    rule_id: IdPath,
    month: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}$")],
    who: StaffReader,
    engine: DbEngine,
) -> MonthOut:
    return _month_out(engine, who, rule_id, _month(month), None)


class TenantShareOut(BaseModel):
    month: dt.date
    name: str
    method: str
    source: str
    weight: int
    weight_total: int
    energy_wh: int
    amount_micros: int
    how: str


@router.get("/shares", response_model=list[TenantShareOut])
def list_shares(
    who: Anyone, engine: DbEngine, account_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> list[TenantShareOut]:
    """An account's apportionment shares with how each was computed (a tenant: their own account)."""
    if who.role is Role.TENANT:
        account_id = who.account_id
    if account_id is None:
        raise problem("account_id", "which account's shares?")
    with engine.connect() as conn:
        if queries.get_account(conn, scope_of(who), account_id) is None:
            raise not_found("account", account_id)
        rows = billing_queries.tenant_shares(conn, account_id)
    return [TenantShareOut.model_validate(row) for row in rows]


# --- bills -------------------------------------------------------------------------------------------------


@mirror(billing.BillLine)
class BillLineOut(Model):
    pass


class BillOut(Model):
    bill_no: str
    site_id: int
    account_id: int
    account_no: str
    kind: str
    period_first: dt.date
    period_last: dt.date
    state: str
    amount_micros: int
    amount_fen: int
    due_on: dt.date | None
    order_no: str | None
    lines: list[BillLineOut]


def _tenant_account(who: Principal) -> int | None:
    return who.account_id if who.role is Role.TENANT else None


@router.get("/bills", response_model=list[BillOut])
def list_bills(
    who: Anyone,
    engine: DbEngine,
    site_id: SiteQuery = None,
    state: Annotated[str | None, Query(max_length=12)] = None,
    account_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[BillOut]:
    """Bills, newest period first (a tenant: their own)."""
    one_of(state, BILL_STATES, "state")
    account_id = _tenant_account(who) or account_id
    with engine.connect() as conn:
        found = billing_queries.org_bills(
            conn, who.organisation_id, site_id=site_id, state=state, account_id=account_id, limit=limit
        )
    return [BillOut.model_validate(b) for b in found]


def _export(found: list[billing.Bill], language: str, title: str, filename: str) -> Response:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bills.xlsx"
        billing.export_bills_xlsx(found, path, language, title)
        content = path.read_bytes()
    return Response(content, media_type=XLSX, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/bills.xlsx", response_class=Response, responses={200: {"content": {XLSX: {}}}})
def export_bills(
    who: StaffReader,
    engine: DbEngine,
    site_id: SiteQuery = None,
    state: Annotated[str | None, Query(max_length=12)] = None,
    lang: Lang = "zh-CN",
) -> Response:
    """The bills (of a site, in a state) as an Excel workbook: bills with a total row, and their lines."""
    one_of(state, BILL_STATES, "state")
    with engine.connect() as conn:
        found = billing_queries.org_bills(conn, who.organisation_id, site_id=site_id, state=state)
    return _export(found, lang, "bills", "bills.xlsx")


@router.get("/arrears", response_model=list[BillOut])
def list_arrears(who: StaffReader, engine: DbEngine, site_id: SiteQuery = None) -> list[BillOut]:
    """Issued and overdue bills not yet paid, oldest due first."""
    with engine.connect() as conn:
        return [BillOut.model_validate(b) for b in billing_queries.org_arrears(conn, who.organisation_id, site_id)]


@router.get("/arrears.xlsx", response_class=Response, responses={200: {"content": {XLSX: {}}}})
def export_arrears(who: StaffReader, engine: DbEngine, site_id: SiteQuery = None, lang: Lang = "zh-CN") -> Response:
    with engine.connect() as conn:
        found = billing_queries.org_arrears(conn, who.organisation_id, site_id)
    return _export(found, lang, "arrears", "arrears.xlsx")


@router.get("/bills/{bill_no}", response_model=BillOut)
def get_bill(bill_no: BillNo, who: Anyone, engine: DbEngine) -> BillOut:
    with engine.connect() as conn:
        found = billing_queries.org_bill(conn, who.organisation_id, bill_no, _tenant_account(who))
    if found is None:
        raise not_found("bill", bill_no)
    return BillOut.model_validate(found)


class StepIn(BaseModel):
    reason: Reason


def _move(step: str, bill_no: str, body: StepIn, who: Principal, engine: Any, now: dt.datetime) -> BillOut:
    action = {"confirm": billing.confirm_bill, "issue": billing.issue_bill, "void": billing.void_bill}[step]
    with engine.begin() as conn:
        if billing_queries.org_bill(conn, who.organisation_id, bill_no) is None:
            raise not_found("bill", bill_no)
        done = action(conn, bill_no, actor=who.actor, reason=body.reason, now=now)
        if isinstance(done, Rejected):
            raise _refused(done)
    return BillOut.model_validate(done)


@router.post("/bills/{bill_no}/confirm", response_model=BillOut)
def confirm_bill(bill_no: BillNo, body: StepIn, who: Finance, engine: DbEngine, now: Now) -> BillOut:
    """draft -> confirmed: checked; nothing can be added any more."""
    return _move("confirm", bill_no, body, who, engine, now)


@router.post("/bills/{bill_no}/issue", response_model=BillOut)
def issue_bill(bill_no: BillNo, body: StepIn, who: Finance, engine: DbEngine, now: Now) -> BillOut:
    """confirmed -> issued, with its due date; the tenant is told."""
    return _move("issue", bill_no, body, who, engine, now)


@router.post("/bills/{bill_no}/void", response_model=BillOut)
def void_bill(bill_no: BillNo, body: StepIn, who: Finance, engine: DbEngine, now: Now) -> BillOut:
    """Any unpaid bill -> void."""
    return _move("void", bill_no, body, who, engine, now)


class PayIn(BaseModel):
    receipt_no: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
    method: Literal["cash", "card"] = "cash"


@router.post("/bills/{bill_no}/pay", response_model=BillOut)
async def pay_bill(
    bill_no: BillNo, body: PayIn, request: Request, who: Finance, engine: DbEngine, now: Now
) -> Response:
    """Take payment of an issued or overdue bill at the cashier (the bill's amount to the fen); the bill is paid."""

    def work() -> tuple[int, Any]:
        done = billing_queries.pay_bill_at_cashier(
            engine, who.organisation_id, bill_no, body.receipt_no, body.method, who.actor, now
        )
        if isinstance(done, Rejected):
            if done.field == "bill_no":
                return 404, {"detail": f"bill {bill_no} not found"}
            status = 409 if done.field == "state" or "already" in done.message else 422
            return status, {"detail": f"{done.field}: {done.message}"}
        return 200, ok_json(BillOut.model_validate(done))

    return await idempotent(request, who, lambda: run_in_threadpool(work))


class DraftIn(BaseModel):
    site_id: Annotated[int, Field(ge=1, le=MAX_ID)]
    first: dt.date
    last: dt.date


@mirror(billing.DraftResult)
class DraftOut(Model):
    pass


@router.post("/postpaid/drafts", response_model=DraftOut)
async def draft_bills(body: DraftIn, request: Request, who: Operator, engine: DbEngine, now: Now) -> Response:
    """Draft the post-paid bills of the site for [first, last] from the frozen registers (once per account)."""
    await run_in_threadpool(_site, engine, who, body.site_id)

    def work() -> tuple[int, Any]:
        done = billing.draft_postpaid_bills(engine, body.site_id, body.first, body.last, actor=who.actor, now=now)
        if isinstance(done, Rejected):
            return 422, {"detail": f"{done.field}: {done.message}"}
        return 200, ok_json(DraftOut.model_validate(done))

    return await idempotent(request, who, lambda: run_in_threadpool(work))
