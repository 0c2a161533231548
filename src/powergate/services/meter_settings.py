"""Meter settings changed by an operator: the tariff a meter is rated against.

``set_tariff`` points a meter at another tariff from now on, in the caller's transaction, with its audit record
(who, why, old and new tariff). Readings already rated keep their amounts (the ledger is append-only); the next
reading is rated against the new tariff. Unknown meters and tariffs, a water tariff on an electricity meter's
account and the tariff it already has come back as ``Problem`` values naming the field; nothing is written then.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, select, update

from powergate.headend.commands import Problem
from powergate.store.audit import record_audit
from powergate.store.tables import meters, tariffs


def set_tariff(
    conn: Connection, meter_id: str, tariff_id: str, *, actor: str, reason: str, now: dt.datetime
) -> Problem | None:
    """Rate ``meter_id`` against ``tariff_id`` from now on (audited as ``set_tariff`` on ``meter:<id>``)."""
    if not reason.strip():
        return Problem("reason", "why must be given: every tariff change is audited")
    current = conn.execute(select(meters.c.tariff_id).where(meters.c.id == meter_id)).scalar()
    if current is None:
        return Problem("meter_id", f"no meter {meter_id!r}")
    commodity = conn.execute(select(tariffs.c.commodity).where(tariffs.c.id == tariff_id)).scalar()
    if commodity is None:
        return Problem("tariff_id", f"no tariff {tariff_id!r}")
    old_commodity = conn.execute(select(tariffs.c.commodity).where(tariffs.c.id == current)).scalar()
    if commodity != old_commodity:
        return Problem("tariff_id", f"tariff {tariff_id!r} prices {commodity}, the meter measures {old_commodity}")
    if current == tariff_id:
        return Problem("tariff_id", f"meter {meter_id} is already on tariff {tariff_id!r}")
    conn.execute(update(meters).where(meters.c.id == meter_id).values(tariff_id=tariff_id))
    detail = {"from": str(current), "to": tariff_id}
    record_audit(conn, actor, "set_tariff", f"meter:{meter_id}", reason, detail, now)
    return None
