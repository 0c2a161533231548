"""Notification preferences: which channels the tenant wants for each kind of event.

``GET /portal/notifications`` shows a grid (event x channel) of the tenant's choices, or the defaults when
nothing was chosen (``services.portal.preferences``); only channels the account has an address for can be
chosen. ``POST`` stores every event's choice (form fields ``<event>`` with the chosen channels; an unticked
event is "none") through ``services.notify.set_preference`` (``services.portal.save_preferences``, audited).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from powergate.services import portal
from powergate.web.deps import get_engine
from powergate.web.portal._common import Tenant, TenantDep, now, render

router = APIRouter(prefix="/notifications", tags=["portal"], include_in_schema=False)

MAX_VALUES = 100


def _preferences(engine: Engine, account: portal.TenantAccount) -> portal.Preferences:
    with engine.connect() as conn:
        return portal.preferences(conn, account)


async def _page(
    request: Request, who: Tenant, *, status: int = 200, error: str = "", saved: bool = False
) -> HTMLResponse:
    found = await run_in_threadpool(_preferences, get_engine(request), who.account)
    context = {"prefs": found, "events": portal.TENANT_EVENTS, "error": error, "saved": saved}
    return render(request, "notifications.html", context, account=who.account, status=status)


@router.get("", response_class=HTMLResponse)
async def notifications_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    return await _page(request, who, saved=bool(request.query_params.get("saved")))


def _save(
    engine: Engine, account: portal.TenantAccount, chosen: dict[str, list[str]], at: dt.datetime
) -> portal.Refused | None:
    with engine.begin() as conn:
        saved = portal.save_preferences(conn, account, chosen, at)
        if isinstance(saved, portal.Refused):
            conn.rollback()
            return saved
    return None


@router.post("")
async def save(request: Request, who: Tenant = TenantDep) -> Response:
    form = await request.form()
    items = [(k, v) for k, v in form.multi_items() if k not in ("csrf_token",)]
    if len(items) > MAX_VALUES or any(not isinstance(v, str) or len(v) > 32 or len(k) > 40 for k, v in items):
        return await _page(request, who, status=422, error=f"form: at most {MAX_VALUES} short values")
    chosen: dict[str, list[str]] = {}
    for event, channel in items:
        assert isinstance(channel, str)
        chosen.setdefault(event, []).append(channel)
    refused = await run_in_threadpool(_save, get_engine(request), who.account, chosen, now(request))
    if refused is not None:
        return await _page(request, who, status=422, error=str(refused))
    return RedirectResponse("/portal/notifications?saved=1", status_code=303)
