"""The tenant's home page: balance, run-out forecast, supply state, usage today and this month with curves.

``GET /portal/`` renders ``services.portal.home``: the cost figures are the wallet's ledger postings and the
energy the meters' register deltas, bucketed by the site's local hours and days. The curves are drawn by
``/static/portal/portal.js`` with Chart.js from ``data-*`` attributes (no inline script: CSP 'self').
``GET /portal/me`` links to statements, auto-recharge, notification preferences and logout.
"""

from __future__ import annotations

import datetime as dt
import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from powergate.domain.forecast import describe
from powergate.services import portal
from powergate.web.deps import get_engine
from powergate.web.i18n import language
from powergate.web.portal._common import Tenant, TenantDep, now, render

router = APIRouter(tags=["portal"], include_in_schema=False)


def _home(engine: Engine, account: portal.TenantAccount, at: dt.datetime) -> portal.Home:
    with engine.connect() as conn:
        return portal.home(conn, account, at)


def curve_data(points: tuple[portal.Point, ...]) -> dict[str, str]:
    """The ``data-*`` attributes of a curve's canvas: labels, energy in Wh and cost in micros (integers)."""
    return {
        "labels": json.dumps([p.label for p in points]),
        "energy": json.dumps([p.energy_wh for p in points]),
        "cost": json.dumps([p.cost_micros for p in points]),
    }


@router.get("/", response_class=HTMLResponse)
async def home_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    home = await run_in_threadpool(_home, get_engine(request), who.account, now(request))
    lang = language(request)
    context = {
        "home": home,
        "forecast_text": describe(home.forecast, "zh" if lang == "zh-CN" else "en"),
        "hourly": curve_data(home.hourly),
        "daily": curve_data(home.daily),
    }
    return render(request, "home.html", context, account=who.account)


@router.get("/me", response_class=HTMLResponse)
async def me_page(request: Request, who: Tenant = TenantDep) -> HTMLResponse:
    return render(request, "me.html", {}, account=who.account)
