"""``/api/v1/audit``: the organisation's audit log, newest first, filtered by subject, actor, action and time.

Staff read it (an admin, finance and operators answer for what they did; viewers audit). Scoping: the records
whose actor is one of the organisation's users or whose subject names one of its objects
(``powergate.services.queries.list_audit``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from powergate.services import queries
from powergate.web.api._common import (
    ERRORS,
    NO_NUL,
    Cursor,
    DbEngine,
    Limit,
    Model,
    PageOut,
    StaffReader,
    TimeQuery,
    paged,
    scope_of,
    window,
)
from powergate.web.api._models import mirror

router = APIRouter(tags=["audit"], responses=ERRORS)
AuditText = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]


@mirror(queries.AuditRow)
class AuditOut(Model):
    pass


@router.get("/audit", response_model=PageOut[AuditOut])
def list_audit(
    who: StaffReader,
    engine: DbEngine,
    subject: AuditText = None,
    actor: AuditText = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    since: TimeQuery = None,
    until: TimeQuery = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut[AuditOut]:
    """Exact-match filters: ``subject=account:12``, ``actor=user:alice@ORG1``, ``action=trip``."""
    start, end = window(since, until)
    wanted = queries.AuditFilter(subject, actor, action, start, end)
    with engine.connect() as conn:
        return paged(lambda: queries.list_audit(conn, scope_of(who), wanted, cursor=cursor, limit=limit), AuditOut)
