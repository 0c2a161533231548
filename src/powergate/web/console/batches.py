"""Console: batch operations (批量操作). The organisation's batches with their progress; a form to start one
(selection by site, building, floor, tariff, tag, or an uploaded list, with a live count of what it selects);
a batch's page with a progress bar that refreshes through htmx, each target's result, "retry failures" and
"cancel".

Everything goes through ``powergate.services.batch`` (validated and audited there); forms carry the hidden
``idempotency_key`` and run through ``idempotent``, so a double click starts one batch. Every staff role reads;
operators (and admins) start, retry and cancel batches, finance (and admins) the money batches (recharge,
base allowance), as in the API.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection, select

from powergate.domain.money import parse_micros
from powergate.services import batch, queries
from powergate.services.accounts import Rejected
from powergate.store.tables_batch import TARGET_STATES
from powergate.store.tables_structure import buildings, floors, sites
from powergate.web.api._common import IdPath
from powergate.web.api.batches import MONEY_OPERATIONS, create_and_start
from powergate.web.console._batch_render import render_b
from powergate.web.console._common_b import Staff, choice_param, form_text, int_param, read, with_engine
from powergate.web.deps import Principal, Role, get_engine, now
from powergate.web.idempotency import idempotent

router = APIRouter(prefix="/batches", tags=["console"])

OPERATIONS = tuple(op.value for op in batch.Operation)
LIST_KINDS = ("meter_ids", "account_nos")
PAGE_TARGETS = 500


def may_start(who: Principal, operation: batch.Operation) -> bool:
    allowed = (Role.ADMIN, Role.FINANCE) if operation in MONEY_OPERATIONS else (Role.ADMIN, Role.OPERATOR)
    return who.role in allowed


def _places(conn: Connection, organisation_id: int) -> dict[str, Any]:
    org_sites = conn.execute(
        select(sites.c.id, sites.c.name, sites.c.timezone).where(sites.c.organisation_id == organisation_id)
    ).all()
    site_ids = [int(s.id) for s in org_sites]
    org_buildings = conn.execute(
        select(buildings.c.id, buildings.c.name, buildings.c.site_id).where(buildings.c.site_id.in_(site_ids))
    ).all()
    org_floors = conn.execute(
        select(floors.c.id, floors.c.name, buildings.c.name.label("building"))
        .join(buildings, buildings.c.id == floors.c.building_id)
        .where(buildings.c.site_id.in_(site_ids))
    ).all()
    return {
        "sites": org_sites,
        "buildings": org_buildings,
        "floors": org_floors,
        "tariffs": [row for row, _ in queries.tariffs_with_documents(conn, queries.Scope(organisation_id))],
        "tags": batch.organisation_tags(conn, organisation_id),
    }


async def _index(request: Request, who: Principal, *, status_code: int = 200, **ctx: Any) -> Response:
    state = choice_param(request.query_params.get("state"), "state", ("scheduled", "running", "done", "cancelled"))

    def load(conn: Connection) -> dict[str, Any]:
        return {
            "batches": batch.list_batches(conn, who.organisation_id, state=state, limit=100),
            **_places(conn, who.organisation_id),
        }

    data = await read(request, load)
    return render_b(
        request, "batches.html", who, status_code=status_code, operations=OPERATIONS, list_kinds=LIST_KINDS,
        may_start=[op for op in OPERATIONS if may_start(who, batch.Operation(op))], state=state,
        form=ctx.pop("form", {}), **data, **ctx,
    )  # fmt: skip


@router.get("", response_class=HTMLResponse)
async def batches_page(request: Request, who: Staff) -> Response:
    return await _index(request, who)


def _selection(values: Any) -> batch.Selection:
    list_text = form_text(values, "list_text", 200_000)
    if list_text.strip():
        kind = choice_param(form_text(values, "list_kind", 16) or "meter_ids", "list_kind", LIST_KINDS)
        items = batch.parse_list(list_text)
        return batch.Selection(meter_ids=items) if kind == "meter_ids" else batch.Selection(account_nos=items)
    return batch.Selection(
        site_id=int_param(form_text(values, "site_id", 40), "site_id", minimum=1),
        building_id=int_param(form_text(values, "building_id", 40), "building_id", minimum=1),
        floor_id=int_param(form_text(values, "floor_id", 40), "floor_id", minimum=1),
        tariff_id=form_text(values, "tariff_id", 64).strip() or None,
        tag=form_text(values, "tag", 32).strip() or None,
    )


def _operation(values: Any) -> batch.Operation:
    chosen = choice_param(form_text(values, "operation", 24), "operation", OPERATIONS)
    if chosen is None:
        raise HTTPException(422, detail="operation: choose an operation")
    return batch.Operation(chosen)


def _yuan(values: Any, name: str, decimals: int = 2) -> int | None:
    text = form_text(values, name, 24).strip()
    if not text:
        return None
    try:
        return parse_micros(text, field=name, max_decimals=decimals)
    except ValueError as error:
        raise HTTPException(422, detail=str(error)) from None


def _parameters(operation: batch.Operation, values: Any) -> dict[str, Any]:
    """The operation's parameters from the form (money in yuan, as people write it)."""
    if operation is batch.Operation.SET_TARIFF:
        return {"tariff_id": form_text(values, "new_tariff_id", 64).strip() or None}
    if operation is batch.Operation.SET_ALARMS:
        return {"alarm1_micros": _yuan(values, "alarm1"), "alarm2_micros": _yuan(values, "alarm2")}
    if operation is batch.Operation.SET_POWER_LIMIT:
        return {
            "power_limit_w": int_param(
                form_text(values, "power_limit_w", 40), "power_limit_w", maximum=batch.MAX_POWER_W
            )
        }
    if operation is batch.Operation.PUSH_PRICES:
        prices = [_yuan(values, f"price_{band}", 4) for band in ("sharp", "peak", "flat", "valley")]
        return {"prices_micros": None if None in prices else prices}
    if operation is batch.Operation.RECHARGE:
        amount = _yuan(values, "amount")
        return {"amount_fen": None if amount is None else amount // 10_000}
    if operation is batch.Operation.GRANT_ALLOWANCE:
        return {"amount_micros": _yuan(values, "allowance")}
    return {}


def _run_at(values: Any, zone: str) -> dt.datetime | None:
    text = form_text(values, "run_at", 32).strip()
    if not text:
        return None
    try:
        local = dt.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            422, detail=f"run_at: expected a date and time like 2026-12-01T22:00, got {text!r}"
        ) from None
    return (local if local.tzinfo else local.replace(tzinfo=ZoneInfo(zone))).astimezone(dt.UTC)


@router.get("/preview", response_class=HTMLResponse)
async def preview(request: Request, who: Staff) -> Response:
    """The live count of a selection (an htmx partial of the form)."""
    values = request.query_params
    operation = _operation(values)
    selection = _selection(values)

    def count(conn: Connection) -> batch.Preview | Rejected:
        return batch.preview(conn, who.organisation_id, operation, selection)

    found = await read(request, count)
    return render_b(request, "batch_preview.html", who, found=found, rejected=isinstance(found, Rejected))


@router.post("", response_class=HTMLResponse)
async def create(request: Request, who: Staff) -> Response:
    form = await request.form()
    operation = _operation(form)
    if not may_start(who, operation):
        raise HTTPException(403, detail=f"a {operation.value} batch needs another role; you are {who.role.value}")
    zone = "Asia/Shanghai"
    new = batch.NewBatch(
        who.organisation_id,
        operation,
        _selection(form),
        _parameters(operation, form),
        form_text(form, "reason", batch.MAX_REASON_CHARS).strip(),
        who.actor,
        _run_at(form, zone),
        int_param(
            form_text(form, "max_in_flight_per_link", 40),
            "max_in_flight_per_link",
            minimum=1,
            maximum=batch.MAX_IN_FLIGHT_PER_LINK,
        )
        or batch.DEFAULT_MAX_IN_FLIGHT_PER_LINK,
        int_param(
            form_text(form, "command_valid_s", 40),
            "command_valid_s",
            minimum=batch.MIN_COMMAND_VALID_S,
            maximum=batch.MAX_COMMAND_VALID_S,
        )
        or batch.DEFAULT_COMMAND_VALID_S,
    )
    at = now(request)

    def work(engine: Any) -> tuple[int, Any]:
        made = create_and_start(engine, new, at)
        if isinstance(made, Rejected):
            return 422, {"field": made.field, "message": made.message}
        return 201, {"id": made.id}

    async def run() -> tuple[int, Any]:
        return await with_engine(request, work)

    async def show_error(body: Any) -> Response:
        return await _index(request, who, status_code=422, error=f"{body['field']}: {body['message']}", form=dict(form))

    stored: dict[str, Any] = {}

    def show(status: int, body: Any) -> Response:
        stored.update(status=status, body=body)
        if status == 201:
            return RedirectResponse(f"/console/batches/{body['id']}", status_code=303)
        return Response(status_code=status)

    answer = await idempotent(request, who, run, render=show)
    if stored.get("status") == 422:
        return await show_error(stored["body"])
    return answer


async def _batch(request: Request, who: Principal, batch_id: IdPath) -> batch.BatchView:
    def load(conn: Connection) -> batch.BatchView | None:
        return batch.get_batch(conn, who.organisation_id, batch_id)

    found = await read(request, load)
    if found is None:
        raise HTTPException(404, detail=f"batch {batch_id} not found")
    return found


@router.get("/{batch_id}", response_class=HTMLResponse)
async def detail(request: Request, who: Staff, batch_id: IdPath) -> Response:
    found = await _batch(request, who, batch_id)
    state = choice_param(request.query_params.get("state"), "state", TARGET_STATES)

    def load(conn: Connection) -> list[batch.TargetView]:
        return batch.list_targets(conn, who.organisation_id, batch_id, state=state, limit=PAGE_TARGETS) or []

    targets = await read(request, load)
    return render_b(
        request, "batch_detail.html", who, b=found, targets=targets, state=state, states=TARGET_STATES,
        can_change=may_start(who, batch.Operation(found.operation)), page_limit=PAGE_TARGETS,
        error=request.query_params.get("error"),
    )  # fmt: skip


@router.get("/{batch_id}/progress", response_class=HTMLResponse)
async def progress(request: Request, who: Staff, batch_id: IdPath) -> Response:
    """The progress bar and counts (htmx polls it while the batch runs)."""
    found = await _batch(request, who, batch_id)
    return render_b(request, "batch_progress.html", who, b=found)


async def _change(request: Request, who: Principal, batch_id: int, action: str) -> Response:
    found = await _batch(request, who, batch_id)
    if not may_start(who, batch.Operation(found.operation)):
        raise HTTPException(403, detail=f"this batch needs another role; you are {who.role.value}")
    form = await request.form()
    reason = form_text(form, "reason", batch.MAX_REASON_CHARS).strip()
    at = now(request)
    engine = get_engine(request)

    def work(_: Any) -> tuple[int, Any]:
        with engine.begin() as conn:
            step = batch.retry_failures if action == "retry" else batch.cancel_batch
            done = step(conn, who.organisation_id, batch_id, actor=who.actor, reason=reason, now=at)
        if isinstance(done, Rejected):
            return 422, {"error": str(done)}
        return 200, {"ok": True}

    async def run() -> tuple[int, Any]:
        return await with_engine(request, work)

    def show(status: int, body: Any) -> Response:
        target = f"/console/batches/{batch_id}"
        if status != 200:
            from urllib.parse import quote

            target += f"?error={quote(str(body.get('error', '')))}"
        return RedirectResponse(target, status_code=303)

    return await idempotent(request, who, run, render=show)


@router.post("/{batch_id}/retry")
async def retry(request: Request, who: Staff, batch_id: IdPath) -> Response:
    return await _change(request, who, batch_id, "retry")


@router.post("/{batch_id}/cancel")
async def cancel(request: Request, who: Staff, batch_id: IdPath) -> Response:
    return await _change(request, who, batch_id, "cancel")
