"""Bills and receipts: the tenant's orders and refunds, a printable receipt per order, monthly statements.

- ``GET /portal/bills``: recharges (orders) and refunds, newest first (``?page=N`` for older orders).
- ``GET /portal/bills/{order_no}``: the receipt of one order, laid out to print (a "not paid" banner when it
  is not paid: an unpaid order is never shown as a receipt).
- ``GET /portal/statements``: one line per month from the daily freezes (energy, cost, TOU split) with the
  monthly settlement when it has been made; ``GET /portal/statements/{YYYY-MM}``: the month day by day.

Another account's order is 404, like an unknown one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from powergate.services import portal
from powergate.web.deps import get_engine
from powergate.web.portal._common import Tenant, TenantDep, now, render

router = APIRouter(tags=["portal"], include_in_schema=False)

PAGE_ROWS = 30
MAX_PAGE = 1_000


def _bills(engine: Engine, account: portal.TenantAccount, page: int) -> dict[str, Any]:
    with engine.connect() as conn:
        found = portal.orders_of(conn, account, limit=PAGE_ROWS + 1, offset=(page - 1) * PAGE_ROWS)
        return {
            "orders": found[:PAGE_ROWS],
            "more": len(found) > PAGE_ROWS,
            "refunds": portal.refunds_of(conn, account) if page == 1 else [],
            "page": page,
        }


@router.get("/bills", response_class=HTMLResponse)
async def bills_page(
    request: Request, page: int = Query(1, ge=1, le=MAX_PAGE), who: Tenant = TenantDep
) -> HTMLResponse:
    context = await run_in_threadpool(_bills, get_engine(request), who.account, page)
    return render(request, "bills.html", context, account=who.account)


def _order(engine: Engine, account: portal.TenantAccount, order_no: str) -> portal.OrderLine:
    with engine.connect() as conn:
        order = portal.order_of(conn, account, order_no)
    if order is None:
        raise HTTPException(status_code=404, detail=f"no order {order_no}")
    return order


@router.get("/bills/{order_no}", response_class=HTMLResponse)
async def receipt_page(
    request: Request,
    order_no: str = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$"),
    who: Tenant = TenantDep,
) -> HTMLResponse:
    order = await run_in_threadpool(_order, get_engine(request), who.account, order_no)
    return render(request, "receipt.html", {"order": order}, account=who.account)


def _statements(engine: Engine, account: portal.TenantAccount, at: dt.datetime) -> list[portal.Statement]:
    with engine.connect() as conn:
        return portal.statements(conn, account, at)


@router.get("/statements", response_class=HTMLResponse)
async def statements_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    found = await run_in_threadpool(_statements, get_engine(request), who.account, now(request))
    return render(request, "statements.html", {"statements": found}, account=who.account)


def _month(engine: Engine, account: portal.TenantAccount, month: dt.date, at: dt.datetime) -> dict[str, Any]:
    with engine.connect() as conn:
        days = portal.statement_days(conn, account, month)
        summary = next(
            (s for s in portal.statements(conn, account, at, portal.MAX_STATEMENT_MONTHS) if s.month == month), None
        )
    return {"month": month, "days": days, "summary": summary}


@router.get("/statements/{month}", response_class=HTMLResponse)
async def statement_page(
    request: Request,
    month: str = Path(min_length=7, max_length=7, pattern=r"^\d{4}-\d{2}$"),
    who: Tenant = TenantDep,
) -> HTMLResponse:
    first = portal.parse_month(month)
    if isinstance(first, portal.Refused):
        raise HTTPException(status_code=422, detail=f"{first.field}: {first.message}")
    context = await run_in_threadpool(_month, get_engine(request), who.account, first, now(request))
    return render(request, "statement.html", context, account=who.account)
