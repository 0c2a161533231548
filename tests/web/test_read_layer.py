"""The console and the HTTP API read through one organisation-scoped layer (``powergate.services.queries``):
for the same organisation they list the same orders, accounts, alarms, audit records and tariffs, and never
another organisation's. Two organisations are seeded through the real services (``api_seed``); pages are
fetched through the real app on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from api_seed import seed
from sqlalchemy import update

from powergate.store.audit import record_audit
from powergate.store.tables import meters


def _english(client: Any) -> Any:
    client.cookies.set("lang", "en")
    return client


def _api_items(client: Any, path: str, **params: Any) -> list[dict[str, Any]]:
    answer = client.get(path, params={"limit": 500, **params})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def test_the_console_and_the_api_list_the_same_rows_of_an_organisation(web: Any) -> None:
    mine, theirs = seed(web), seed(web, "ORG2")
    api = web.bearer("viewer", mine.organisation_id)
    console = _english(web.client("viewer", mine.organisation_id))

    orders = {row["order_no"] for row in _api_items(api, "/api/v1/orders")}
    finance = console.get("/console/finance").text
    assert orders == set(re.findall(r'href="/console/finance/orders/([^"]+)"', finance)) == {mine.order_no}
    assert console.get(f"/console/finance/orders/{theirs.order_no}").status_code == 404

    accounts = {row["account_no"] for row in _api_items(api, "/api/v1/accounts")}
    listed = console.get("/console/accounts").text
    assert accounts == {mine.account_no, f"A-{mine.code}-2"}
    assert all(no in listed for no in accounts) and "A-ORG2" not in listed
    assert mine.meter_id in console.get(f"/console/accounts?q={mine.meter_id}").text

    alarms = _english(web.client("operator", mine.organisation_id)).get("/console/alarms").text
    (reconciliation,) = _api_items(api, "/api/v1/alarms/reconciliation")
    (event,) = _api_items(api, "/api/v1/alarms/events")
    assert reconciliation["id"] == mine.alarm_id and event["id"] == mine.event_id
    assert f"reconciliation:{mine.alarm_id}" in alarms and f"event:{mine.event_id}" in alarms
    assert theirs.meter_id not in alarms


def test_the_audit_log_is_the_same_for_the_console_and_the_api(web: Any) -> None:
    mine = seed(web)
    seed(web, "ORG2")
    at = web.clock() + dt.timedelta(minutes=1)
    with web.engine.begin() as conn:
        record_audit(conn, f"user:kim@{mine.code}/key:pg_1a2b3c4d", "probe", "probe:by-key", "by key", {}, at)
        record_audit(conn, f"user:kim@{mine.code}/elsewhere", "probe", "probe:not-a-key", "not a key", {}, at)
        record_audit(conn, "user:lee@ORG2", "probe", "probe:other", "other organisation", {}, at)
    api = web.bearer("viewer", mine.organisation_id)
    console = _english(web.client("viewer", mine.organisation_id))
    seen = {row["subject"] for row in _api_items(api, "/api/v1/audit") if row["action"] == "probe"}
    page = console.get("/console/audit?action=probe").text.split("<tbody>")[-1]
    assert seen == set(re.findall(r"probe:[a-z-]+", page)) == {"probe:by-key"}
    assert [row["subject"] for row in _api_items(api, "/api/v1/audit", subject="probe:by-key")] == ["probe:by-key"]
    assert "probe:by-key" in console.get("/console/audit?subject=by-key").text


def test_a_tariff_that_another_organisation_s_meters_use_is_read_only_in_the_console(web: Any) -> None:
    mine, theirs = seed(web), seed(web, "ORG2")
    with web.engine.begin() as conn:
        conn.execute(update(meters).where(meters.c.id == theirs.meter_id).values(tariff_id=mine.tariff_id))
    admin = _english(web.client("admin", mine.organisation_id))
    detail = admin.get(f"/console/tariffs/{mine.tariff_id}").text
    assert "shared (read-only)" in detail
    api = web.bearer("viewer", mine.organisation_id)
    (row,) = [r for r in _api_items(api, "/api/v1/tariffs") if r["id"] == mine.tariff_id]
    assert row["meters"] == 2 and "shared" not in row
    assert admin.get(f"/console/tariffs/{theirs.tariff_id}").status_code == 404
