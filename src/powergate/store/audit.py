"""The audit log: who changed money or relay state, what, on which subject, why, and when.

``record_audit`` writes one row in the caller's transaction, so the record commits (or rolls back) together
with the change it explains: there is never a change without its record, nor a record of a change that did
not happen. Rows are only ever inserted. Every field is bounded; ``detail`` is a JSON object (sorted keys, so
equal details are equal text) of at most ``MAX_AUDIT_DETAIL_CHARS`` characters.

Actors, actions and subjects are free text by design, but use the conventions: ``actor`` is an operator's
login or ``system:<service>``; ``action`` is a verb phrase in snake case (``open_account``, ``move_meter``,
``refund``, ``trip``); ``subject`` names the thing as ``kind:id`` (``account:ORG1/A-1001``, ``meter:M-1``,
``order:W123``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from powergate.store.tables_structure import MAX_AUDIT_DETAIL_CHARS, audit_log

MAX_ACTOR_CHARS = 120
MAX_ACTION_CHARS = 64
MAX_SUBJECT_CHARS = 200
MAX_REASON_CHARS = 2_000
MAX_READ_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: dt.datetime
    actor: str
    action: str
    subject: str
    reason: str
    detail: dict[str, Any]


def record_audit(
    conn: Connection,
    actor: str,
    action: str,
    subject: str,
    reason: str,
    detail: Mapping[str, Any] | None,
    at: dt.datetime,
) -> int:
    """Append one audit record in the caller's transaction; returns its id.

    Missing or oversized fields are programmer errors (assertions): the caller always knows who and why.
    ``detail`` must be JSON-serialisable (ints, strings, lists, dicts; money as integer micros).
    """
    assert at.tzinfo is not None, "audit time must be timezone-aware"
    for name, value, limit in (
        ("actor", actor, MAX_ACTOR_CHARS),
        ("action", action, MAX_ACTION_CHARS),
        ("subject", subject, MAX_SUBJECT_CHARS),
        ("reason", reason, MAX_REASON_CHARS),
    ):
        assert value.strip(), f"audit {name} must not be empty"
        assert len(value) <= limit, f"audit {name} is {len(value)} characters, more than {limit}"
    text = json.dumps(dict(detail or {}), sort_keys=True, ensure_ascii=False, allow_nan=False)
    assert len(text) <= MAX_AUDIT_DETAIL_CHARS, f"audit detail is {len(text)} characters"
    result = conn.execute(
        insert(audit_log).values(at=at, actor=actor, action=action, subject=subject, reason=reason, detail=text)
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


def audit_records(
    conn: Connection, *, subject: str | None = None, action: str | None = None, limit: int = 1_000
) -> list[AuditRecord]:
    """Audit records, oldest first, optionally for one subject and/or action; at most ``limit`` rows."""
    assert 0 < limit <= MAX_READ_ROWS, f"limit must be 1..{MAX_READ_ROWS}"
    query = select(audit_log).order_by(audit_log.c.id).limit(limit)
    if subject is not None:
        query = query.where(audit_log.c.subject == subject)
    if action is not None:
        query = query.where(audit_log.c.action == action)
    return [
        AuditRecord(int(r.id), r.at, r.actor, r.action, r.subject, r.reason, json.loads(r.detail))
        for r in conn.execute(query)
    ]
