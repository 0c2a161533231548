"""Console: alarms (告警). Reconciliation alarms (meter-side balance and purchase-count mismatches, ledger and
flow discrepancies), meter events (cover open, reverse current, magnetic interference, ...) and meters offline
now, each with an acknowledgement (who and why, audited; refused if someone acknowledged it first).

Open alarms are shown by default; ``?show=all`` includes acknowledged ones with who acknowledged them and when.
Admins, operators and finance acknowledge (as in the HTTP API); every staff role reads. An acknowledgement is
an ``ack_alarm`` audit record on ``alarm:<source>:<id>``, the same as the API's.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection

from powergate.services import backoffice
from powergate.services.accounts import Rejected
from powergate.web.console._common_b import (
    ACKNOWLEDGERS,
    Acknowledger,
    Staff,
    can,
    choice_param,
    form_text,
    organisation_zone,
    read,
    sites_of,
    write,
)
from powergate.web.console._render import render
from powergate.web.deps import Principal, now

router = APIRouter(prefix="/alarms", tags=["console"])


async def _page(request: Request, who: Principal, *, status_code: int = 200, **ctx: Any) -> Response:
    show = choice_param(request.query_params.get("show"), "show", ("open", "all")) or "open"
    everything = show == "all"

    def load(conn: Connection) -> dict[str, list[backoffice.AlarmLine]]:
        org = who.organisation_id
        return {
            "reconciliation": backoffice.reconciliation_alarm_lines(conn, org, include_acknowledged=everything),
            "event": backoffice.event_alarm_lines(conn, org, include_acknowledged=everything),
            "offline": backoffice.offline_alarm_lines(conn, org, include_acknowledged=everything),
        }

    sections = await read(request, load)
    zone = organisation_zone(await sites_of(request, who))
    return render(
        request,
        "alarms.html",
        who,
        status_code=status_code,
        sections=sections,
        show=show,
        zone=zone,
        can_ack=can(who, ACKNOWLEDGERS),
        acked=request.query_params.get("acked"),
        **ctx,
    )


@router.get("", response_class=HTMLResponse)
async def alarms_page(request: Request, who: Staff) -> Response:
    return await _page(request, who)


@router.post("/ack", response_class=HTMLResponse)
async def acknowledge(request: Request, who: Acknowledger) -> Response:
    form = await request.form()
    key = form_text(form, "alarm", 200)
    reason = form_text(form, "reason", 2_000)
    at = now(request)
    result = await write(
        request,
        lambda conn: backoffice.acknowledge(conn, who.organisation_id, key, actor=who.actor, reason=reason, now=at),
    )
    if isinstance(result, Rejected):
        status = 404 if result.message.startswith("no alarm") else (409 if "already" in result.message else 422)
        return await _page(request, who, status_code=status, error=str(result), error_alarm=key)
    return RedirectResponse(f"/console/alarms?acked={result.key}", status_code=303)
