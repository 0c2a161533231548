"""Console: accounts (账户). List with filters and search, account detail, one-click open of a pre-staged account,
close with settlement (cash refund now, or later), and bulk import from Excel (template, upload, preview with
per-row problems, apply).

Every change goes through ``powergate.services.accounts`` / ``services.importer`` with the operator as actor and
a reason, so each is audited in its own transaction. Closing moves money (the settlement refund), so it runs
under ``idempotent`` with the form's ``idempotency_key``: a double click answers the first result again.

An uploaded sheet is kept for the apply step in the server's temporary directory, named by organisation and
the file's SHA-256 (the apply form carries only the hash), and deleted once applied; files older than a day
are swept on the next upload. Several web nodes need a shared temporary directory (or sticky sessions).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection, Engine

from powergate.services import accounts as account_service
from powergate.services import importer, queries
from powergate.store.tables_structure import ACCOUNT_STATES
from powergate.web.console._common_b import (
    OPERATORS,
    XLSX,
    Operator,
    Staff,
    can,
    choice_param,
    form_text,
    int_param,
    read,
    site_choice,
    sites_of,
    with_engine,
    write,
    xlsx_response,
)
from powergate.web.console._render import render
from powergate.web.deps import Principal, now
from powergate.web.idempotency import idempotent

router = APIRouter(prefix="/accounts", tags=["console"])

PAGE_SIZE = 50
IMPORT_DIR = Path(tempfile.gettempdir()) / "powergate-import"
IMPORT_MAX_AGE_S = 24 * 3600
_TOKEN_RE = re.compile(r"^[0-9a-f]{64}$")
SETTLEMENTS = ("cash", "later")


@router.get("", response_class=HTMLResponse)
async def list_page(request: Request, who: Staff) -> Response:
    params = request.query_params
    sites = await sites_of(request, who)
    site = site_choice(sites, params.get("site"))
    state = choice_param(params.get("state"), "state", ACCOUNT_STATES)
    search = params.get("q", "")[: queries.MAX_SEARCH_CHARS]
    page = int_param(params.get("page"), "page", minimum=1, maximum=100_000) or 1
    wanted = queries.AccountFilter(site.id if site else None, state, search or None, search_placements=True)
    scope, offset = queries.Scope(who.organisation_id), (page - 1) * PAGE_SIZE
    found = await read(
        request, lambda conn: queries.number_accounts(conn, scope, wanted, offset=offset, limit=PAGE_SIZE)
    )
    return render(
        request,
        "accounts.html",
        who,
        sites=sites,
        site=site,
        state=state,
        search=search,
        page=page,
        found=found,
        states=ACCOUNT_STATES,
        can_operate=can(who, OPERATORS),
    )


# --- import (declared before /{account_id} so the paths do not clash) ------------------------------------------


@router.get("/import", response_class=HTMLResponse)
async def import_page(request: Request, who: Operator) -> Response:
    return render(request, "accounts_import.html", who, report=None, token=None, filename=None)


@router.get("/import/template.xlsx")
async def import_template(request: Request, who: Operator) -> Response:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "template.xlsx"
        importer.write_template(path)
        content = path.read_bytes()
    return xlsx_response(content, "powergate-import-template.xlsx")


def _sweep_old_uploads() -> None:
    cutoff = time.time() - IMPORT_MAX_AGE_S
    for path in IMPORT_DIR.glob("*.xlsx"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)


def _upload_path(organisation_id: int, token: str) -> Path:
    assert _TOKEN_RE.match(token)
    return IMPORT_DIR / f"{organisation_id}-{token}.xlsx"


@router.post("/import/preview", response_class=HTMLResponse)
async def import_preview(request: Request, who: Operator) -> Response:
    form = await request.form()
    upload = form.get("file")
    if upload is not None and not isinstance(upload, str) and not upload.filename:
        await upload.close()
    if upload is None or isinstance(upload, str) or not upload.filename:
        return render(
            request, "accounts_import.html", who, status_code=422, report=None, token=None, filename=None,
            error="accounts.import_no_file",
        )  # fmt: skip
    try:
        content = await upload.read(importer.MAX_FILE_BYTES + 1)
    finally:
        await upload.close()
    if len(content) > importer.MAX_FILE_BYTES:
        return render(
            request, "accounts_import.html", who, status_code=413, report=None, token=None, filename=None,
            error="accounts.import_too_large",
        )  # fmt: skip
    IMPORT_DIR.mkdir(parents=True, exist_ok=True)
    _sweep_old_uploads()
    token = hashlib.sha256(content).hexdigest()
    path = _upload_path(who.organisation_id, token)
    path.write_bytes(content)
    at = now(request)
    code = await read(request, lambda conn: queries.organisation_code(conn, who.organisation_id))
    report = await with_engine(
        request, lambda engine: importer.import_sheet(engine, path, who.actor, at, organisation=code, dry_run=True)
    )
    if report.problems:
        path.unlink(missing_ok=True)
    status = 422 if report.problems else 200
    return render(
        request, "accounts_import.html", who, status_code=status, report=report,
        token=None if report.problems else token, filename=upload.filename[:200],
    )  # fmt: skip


@router.post("/import/apply", response_class=HTMLResponse)
async def import_apply(request: Request, who: Operator) -> Response:
    form = await request.form()
    token = form_text(form, "token", 64)
    if not _TOKEN_RE.match(token) or not _upload_path(who.organisation_id, token).is_file():
        raise HTTPException(status_code=404, detail="token: no previewed upload with this token; upload it again")
    path = _upload_path(who.organisation_id, token)
    filename = form_text(form, "filename", 200)
    reason = form_text(form, "reason", 2_000).strip()
    if not reason:
        return render(
            request, "accounts_import.html", who, status_code=422, report=None, token=token, filename=filename,
            error="accounts.reason_required",
        )  # fmt: skip
    at = now(request)
    code = await read(request, lambda conn: queries.organisation_code(conn, who.organisation_id))
    report = await with_engine(
        request,
        lambda engine: importer.import_sheet(engine, path, who.actor, at, organisation=code, reason=reason),
    )
    path.unlink(missing_ok=True)
    status = 200 if report.imported else 422
    return render(
        request, "accounts_import.html", who, status_code=status, report=report, token=None,
        filename=filename, applied=report.imported,
    )  # fmt: skip


# --- one account ---------------------------------------------------------------------------------------------


async def _account(request: Request, who: Principal, account_id: int) -> queries.AccountRow:
    def load(conn: Connection) -> queries.AccountRow | None:
        found = queries.get_account(conn, queries.Scope(who.organisation_id), account_id)
        return None if found is None else queries.with_placements(conn, [found])[0]

    found = await read(request, load)
    if found is None:
        raise HTTPException(status_code=404, detail=f"account: no account {account_id}")
    return found


def _detail(
    request: Request, who: Principal, account: queries.AccountRow, *, status_code: int = 200, **ctx: Any
) -> Response:
    return render(
        request,
        "accounts_detail.html",
        who,
        status_code=status_code,
        account=account,
        can_operate=can(who, OPERATORS),
        settlements=SETTLEMENTS,
        done=request.query_params.get("done"),
        **ctx,
    )


@router.get("/{account_id}", response_class=HTMLResponse)
async def detail_page(request: Request, account_id: int, who: Staff) -> Response:
    account = await _account(request, who, account_id)
    return _detail(request, who, account)


@router.post("/{account_id}/open", response_class=HTMLResponse)
async def open_account(request: Request, account_id: int, who: Operator) -> Response:
    account = await _account(request, who, account_id)
    form = await request.form()
    reason = form_text(form, "reason", 2_000).strip()
    if not reason:
        return _detail(request, who, account, status_code=422, error_field="reason", error="accounts.reason_required")
    at = now(request)
    result = await write(
        request, lambda conn: account_service.open_account(conn, account_id, actor=who.actor, reason=reason, now=at)
    )
    if isinstance(result, account_service.Rejected):
        return _detail(request, who, account, status_code=422, error_field=result.field, error_text=str(result))
    return RedirectResponse(f"/console/accounts/{account_id}?done=opened", status_code=303)


@router.post("/{account_id}/close", response_class=HTMLResponse)
async def close_account(request: Request, account_id: int, who: Operator) -> Response:
    account = await _account(request, who, account_id)
    form = await request.form()
    reason = form_text(form, "reason", 2_000).strip()
    settlement = form_text(form, "settlement", 16)
    if not reason or settlement not in SETTLEMENTS:
        field = "reason" if not reason else "settlement"
        message = "accounts.reason_required" if not reason else "accounts.settlement_required"
        return _detail(request, who, account, status_code=422, error_field=field, error=message)
    at = now(request)

    def close(engine: Engine) -> dict[str, Any]:
        # A cash refund touches no provider adapter: the payments service records it and posts it.
        refund = account_service.payments_cash_refund(engine, {}) if settlement == "cash" else _refund_later
        closed = account_service.close_account(
            engine, account_id, refund=refund, actor=who.actor, reason=reason, now=at
        )
        if isinstance(closed, account_service.Rejected):
            return {"ok": False, "field": closed.field, "message": str(closed)}
        return {
            "ok": True,
            "balance_micros": closed.balance_micros,
            "refunded_micros": closed.refunded_micros,
            "written_off_micros": closed.written_off_micros,
            "left_micros": closed.left_micros,
            "final_readings_wh": closed.final_readings_wh,
        }

    async def run() -> tuple[int, Any]:
        body = await with_engine(request, close)
        return (200 if body["ok"] else 422), body

    def show(status: int, body: Any) -> Response:
        return render(
            request, "accounts_closed.html", who, status_code=status, account=account, result=body,
        )  # fmt: skip

    return await idempotent(request, who, run, render=show)


def _refund_later(request: account_service.SettlementRefund) -> object:
    """The operator chose to pay the settlement later: nothing is paid now; closing again settles."""
    return None


__all__ = ["XLSX", "router"]
