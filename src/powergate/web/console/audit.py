"""Console: the audit log (审计). Who did what to which subject, why and when, filtered by subject, actor, action
and date (the organisation's local days), newest first, paginated by id (keyset: a page never shifts while new
records arrive). Only records about the organisation or written by its users are shown.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Connection

from powergate.services import queries
from powergate.web.console._common_b import (
    Staff,
    date_param,
    int_param,
    local_day_bounds,
    organisation_zone,
    read,
    sites_of,
)
from powergate.web.console._render import render

router = APIRouter(prefix="/audit", tags=["console"])

PAGE_SIZE = 50


def _detail_text(detail: dict[str, Any]) -> str:
    """The JSON detail, compact and readable (keys sorted already)."""
    if not detail:
        return ""
    return json.dumps(detail, ensure_ascii=False, separators=(", ", ": "))


@router.get("", response_class=HTMLResponse)
async def audit_page(request: Request, who: Staff) -> Response:
    params = request.query_params
    zone = organisation_zone(await sites_of(request, who))
    first = date_param(params.get("from"), "from")
    last = date_param(params.get("to"), "to")
    since = local_day_bounds(first, first, zone)[0] if first else None
    until = local_day_bounds(last, last, zone)[1] if last else None
    before = int_param(params.get("before"), "before", minimum=1)
    subject = params.get("subject", "")[:200] or None
    actor = params.get("actor", "")[:64] or None
    action = params.get("action", "")[:64] or None
    # "account:12" names one subject exactly (not account:120); a bare word searches within subjects.
    subject_text = (subject or "").strip()
    wanted = queries.AuditFilter(
        subject=subject_text if ":" in subject_text else None,
        action=(action or "").strip() or None,
        since=since,
        until=until,
        subject_contains=subject_text if subject and ":" not in subject_text else None,
        actor_contains=(actor or "").strip() or None,
    )
    cursor = queries.audit_cursor(before) if before else None

    def load(conn: Connection) -> tuple[list[queries.AuditRow], int | None, list[str]]:
        page = queries.list_audit(conn, queries.Scope(who.organisation_id), wanted, cursor=cursor, limit=PAGE_SIZE)
        next_before = page.items[-1].id if page.next_cursor else None
        return page.items, next_before, queries.audit_actions(conn)

    rows, next_before, actions = await read(request, load)
    filters = {
        "subject": subject or "",
        "actor": actor or "",
        "action": action or "",
        "from": first.isoformat() if first else "",
        "to": last.isoformat() if last else "",
    }
    return render(
        request,
        "audit.html",
        who,
        rows=rows,
        details={r.id: _detail_text(r.detail) for r in rows},
        filters=filters,
        actions=actions,
        zone=zone,
        next_url=f"?{urlencode({**filters, 'before': next_before})}" if next_before else None,
        first_url=f"?{urlencode(filters)}" if before else None,
    )
