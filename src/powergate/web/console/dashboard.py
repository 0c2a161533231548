"""The console dashboard (``/console/``): meters online / offline, tripped, low balance, today's energy and
payments, per site and in total; every figure links to the monitoring grid filtered to it.

Read-only, for every staff role; scoped to the principal's organisation (``services.monitoring.dashboard``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from powergate.services import monitoring
from powergate.web.console._render import StaffPage, render
from powergate.web.deps import get_engine, now

router = APIRouter(tags=["console"])


@router.get("/", response_class=HTMLResponse, name="console_dashboard")
def dashboard(request: Request, who: StaffPage) -> HTMLResponse:
    with get_engine(request).connect() as conn:
        board = monitoring.dashboard(conn, who.organisation_id, now(request))
    return render(request, "dashboard.html", who, board=board, states=[s.value for s in monitoring.STATE_ORDER])
