"""Property charges on the tenant's statement (issue 9): custom charges, common-area shares, property bills.

- ``GET /portal/charges``: the tenant's own custom charges (each ``charge_postings`` row of their account with
  its item, period, room, days held of the period's days, amount and whether it was deducted from the balance
  or put on a bill), their common-area apportionment shares with how each was computed
  (``services.billing.account_shares``) and their property bills (``services.billing.list_bills``).

Every query is scoped to the logged-in tenant's account (``principal.account_id``): another account's
charges, shares and bills never show.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, Engine, select
from starlette.concurrency import run_in_threadpool

from powergate.services import billing, portal
from powergate.store.tables_billing import charge_items, charge_postings
from powergate.store.tables_structure import rooms
from powergate.web.deps import get_engine
from powergate.web.portal._common import Tenant, TenantDep, render

router = APIRouter(tags=["portal"], include_in_schema=False)

MAX_ROWS = 240


def charge_lines(conn: Connection, account_id: int, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """The account's custom charges, newest period first."""
    query = (
        select(
            charge_items.c.name,
            charge_items.c.collection,
            charge_postings.c.period_key,
            rooms.c.number.label("room"),
            charge_postings.c.days,
            charge_postings.c.period_days,
            charge_postings.c.amount_micros,
            charge_postings.c.entry_key,
            charge_postings.c.bill_id,
        )
        .join(charge_items, charge_items.c.id == charge_postings.c.item_id)
        .join(rooms, rooms.c.id == charge_postings.c.room_id)
        .where(charge_postings.c.account_id == account_id)
        .order_by(charge_postings.c.period_key.desc(), charge_postings.c.id.desc())
        .limit(limit)
    )
    found = []
    for row in conn.execute(query).mappings():
        line = dict(row)
        line["billed"] = row["bill_id"] is not None or (row["entry_key"] is None and row["collection"] == "bill")
        found.append(line)
    return found


def _charges(engine: Engine, account: portal.TenantAccount) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "charges": charge_lines(conn, account.id),
            "shares": billing.account_shares(conn, account.id),
            "property_bills": billing.list_bills(conn, account.site_id, account_id=account.id, limit=MAX_ROWS),
        }


@router.get("/charges", response_class=HTMLResponse)
async def charges_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    assert who.principal.account_id == who.account.id, "the portal account is the principal's"
    context = await run_in_threadpool(_charges, get_engine(request), who.account)
    return render(request, "charges.html", context, account=who.account)
