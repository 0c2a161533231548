"""Tariffs, alarms, reports and the audit log through the API."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any

from api_seed import seed
from openpyxl import load_workbook

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tariffs"
FLAT = 'id = "plan-a"\nname = "Plan A"\n[[versions]]\neffective_from = "2025-01-01"\nprice = "0.6000"\n'


def test_a_tariff_is_validated_created_quoted_and_given_a_later_version(web: Any) -> None:
    s = seed(web)
    admin = web.bearer("admin", s.organisation_id)
    document = (EXAMPLES / "commercial-tou.toml").read_text(encoding="utf-8")
    checked = admin.post("/api/v1/tariffs/validate", json={"document": document})
    assert checked.status_code == 200 and checked.json()["valid"] is True
    assert [v["pricing"] for v in checked.json()["versions"]] == [["tou"], ["tou"]]
    broken = document.replace('peak = "1.0500"', 'peak = "abc"', 1)
    problems = admin.post("/api/v1/tariffs/validate", json={"document": broken}).json()
    assert problems["valid"] is False and problems["problems"][0]["field"] == "versions[0].tou.prices.peak"
    refused = admin.post("/api/v1/tariffs", json={"document": broken})
    assert refused.status_code == 422 and "versions[0].tou.prices.peak" in refused.json()["detail"]
    created = admin.post("/api/v1/tariffs", json={"document": document, "reason": "shops from July"})
    assert created.status_code == 201, created.text
    assert created.json()["owned"] is True and len(created.json()["versions"]) == 2
    assert admin.post("/api/v1/tariffs", json={"document": document}).status_code == 409
    listed = [t["id"] for t in admin.get("/api/v1/tariffs").json()["items"]]
    assert listed == ["commercial-tou", s.tariff_id]
    readings = (EXAMPLES / "readings.csv").read_text(encoding="utf-8")
    quoted = admin.post("/api/v1/tariffs/commercial-tou/quote", json={"readings": readings})
    assert quoted.status_code == 200, quoted.text
    assert quoted.json()["total_amount_micros"] == sum(m["total_amount_micros"] for m in quoted.json()["meters"])
    flat = admin.post("/api/v1/tariffs", json={"document": FLAT}).json()
    rewritten = FLAT.replace('"0.6000"', '"0.7000"')
    changed_history = admin.post("/api/v1/tariffs/plan-a/versions", json={"document": rewritten, "reason": "x"})
    assert changed_history.status_code == 422 and "versions[0..0] must stay" in changed_history.json()["detail"]
    started = FLAT + '[[versions]]\neffective_from = "2026-11-01"\nprice = "0.7000"\n'
    too_late = admin.post("/api/v1/tariffs/plan-a/versions", json={"document": started, "reason": "x"})
    assert too_late.status_code == 422 and "has begun already" in too_late.json()["detail"]
    upcoming = FLAT + '[[versions]]\neffective_from = "2027-01-01"\nprice = "0.7000"\n'
    added = admin.post("/api/v1/tariffs/plan-a/versions", json={"document": upcoming, "reason": "2027 prices"})
    assert added.status_code == 200, added.text
    assert [v["effective_from"] for v in added.json()["versions"]] == ["2025-01-01T00:00:00", "2027-01-01T00:00:00"]
    assert flat["id"] == "plan-a"
    audit = admin.get("/api/v1/audit", params={"subject": "tariff:plan-a"}).json()["items"]
    assert [(a["action"], a["reason"]) for a in audit] == [
        ("tariff_version", "2027 prices"),
        ("create_tariff", "new tariff"),
    ]
    shared = admin.post(f"/api/v1/tariffs/{s.tariff_id}/versions", json={"document": upcoming, "reason": "x"})
    assert shared.status_code == 403
    other = web.bearer("admin", web.org("ORG2"))
    assert other.get("/api/v1/tariffs/plan-a").status_code == 404
    assert other.get("/api/v1/tariffs").json()["items"] == []


def test_alarms_list_and_acknowledge_once_with_who_and_why(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    alarms = operator.get("/api/v1/alarms/reconciliation", params={"acknowledged": False}).json()["items"]
    assert [(a["id"], a["kind"], a["acknowledged_at"]) for a in alarms] == [(s.alarm_id, "remaining_amount", None)]
    acked = operator.post(f"/api/v1/alarms/reconciliation/{s.alarm_id}/ack", json={"reason": "meter re-read, fine"})
    assert acked.status_code == 200, acked.text
    first = acked.json()
    assert first["acknowledged_by"].endswith("@ORG1") and first["acknowledged_at"] is not None
    web.clock.advance(minutes=5)
    again = operator.post(f"/api/v1/alarms/reconciliation/{s.alarm_id}/ack", json={"reason": "again"})
    assert again.json()["acknowledged_at"] == first["acknowledged_at"]
    assert operator.get("/api/v1/alarms/reconciliation", params={"acknowledged": False}).json()["items"] == []
    events = operator.get("/api/v1/alarms/events", params={"kind": "cover_open"}).json()["items"]
    assert [(e["id"], e["meter_id"]) for e in events] == [(s.event_id, s.meter_id)]
    bad_kind = operator.get("/api/v1/alarms/events", params={"kind": "meteor"})
    assert bad_kind.status_code == 422 and bad_kind.json()["detail"].startswith("kind:")
    assert (
        operator.post(f"/api/v1/alarms/events/{s.event_id}/ack", json={"reason": "cover refitted"}).status_code == 200
    )
    offline = operator.get("/api/v1/alarms/offline").json()["items"]
    assert [m["id"] for m in offline] == [s.other_meter_id]
    trail = operator.get("/api/v1/audit", params={"action": "ack_alarm"}).json()["items"]
    assert [a["subject"] for a in trail] == [f"alarm:event:{s.event_id}", f"alarm:reconciliation:{s.alarm_id}"]
    viewer = web.bearer("viewer", s.organisation_id)
    assert viewer.post(f"/api/v1/alarms/events/{s.event_id}/ack", json={"reason": "x"}).status_code == 403


def test_the_daily_report_after_the_freeze_in_json_and_excel_and_the_settlement(web: Any) -> None:
    s = seed(web)
    finance = web.bearer("finance", s.organisation_id)
    day = web.clock().astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    not_yet = finance.get("/api/v1/reports/daily", params={"site_id": s.site_id, "day": day.isoformat()})
    assert not_yet.status_code == 404 and not_yet.json()["detail"].startswith("day:")
    web.clock.advance(days=1)
    finance = web.bearer("finance", s.organisation_id)  # tokens expire after 8 idle hours
    frozen = finance.post("/api/v1/reports/daily-freeze", json={"site_id": s.site_id, "day": day.isoformat()})
    assert frozen.status_code == 200 and frozen.json()["ran"] is True and frozen.json()["meters"] == 2, frozen.text
    repeat = finance.post("/api/v1/reports/daily-freeze", json={"site_id": s.site_id, "day": day.isoformat()})
    assert repeat.json()["ran"] is False
    report = finance.get("/api/v1/reports/daily", params={"site_id": s.site_id, "day": day.isoformat()}).json()
    assert report["meters"] == 2 and report["cost_micros"] == sum(line["cost_micros"] for line in report["lines"])
    assert report["recharges_micros"] == 100_000_000 and report["offline"] == 1
    excel = finance.get("/api/v1/reports/daily.xlsx", params={"site_id": s.site_id, "day": day.isoformat()})
    assert excel.status_code == 200
    book = load_workbook(io.BytesIO(excel.content))
    summary = {row[0].value: row[1].value for row in book["summary"].iter_rows()}
    assert summary["meters"] == 2 and summary["recharges"] == 100.0
    month = day.replace(day=1)
    early = finance.post("/api/v1/reports/monthly-settlement", json={"site_id": s.site_id, "month": month.isoformat()})
    assert early.status_code == 200 and early.json()["settled"] == 0 and "has not ended" in early.json()["problems"][0]
    web.clock.advance(days=40)
    finance = web.bearer("finance", s.organisation_id)  # tokens expire after 8 idle hours
    settled = finance.post(
        "/api/v1/reports/monthly-settlement", json={"site_id": s.site_id, "month": month.isoformat()}
    )
    assert settled.status_code == 200 and settled.json() == {"settled": 2, "problems": []}, settled.text
    lines = finance.get(
        "/api/v1/reports/monthly-settlements", params={"site_id": s.site_id, "month": month.isoformat()}
    ).json()["items"]
    first = lines[0]
    assert first["account_no"] == s.account_no and first["closing_micros"] == 98_000_000
    flows = (
        first["recharges_micros"] - first["deductions_micros"] - first["refunds_micros"] + first["adjustments_micros"]
    )
    assert first["opening_micros"] + flows == first["closing_micros"]
    viewer = web.bearer("viewer", s.organisation_id)
    assert (
        viewer.post("/api/v1/reports/daily-freeze", json={"site_id": s.site_id, "day": "2026-11-01"}).status_code == 403
    )


def test_the_audit_log_is_the_organisation_s_own_newest_first_and_filtered(web: Any) -> None:
    s = seed(web)
    seed(web, "ORG2")
    operator = web.bearer("operator", s.organisation_id)
    web.clock.advance(minutes=1)
    url = f"/api/v1/meters/{s.meter_id}/commands/trip"
    operator.post(url, json={"reason": "audit me"}, headers={"Idempotency-Key": str(uuid.uuid4())})
    viewer = web.bearer("viewer", s.organisation_id)
    mine = viewer.get("/api/v1/audit", params={"limit": 500}).json()["items"]
    assert mine[0]["action"] == "trip" and mine[0]["reason"] == "audit me"
    assert all("ORG2" not in str(row) for row in mine), [r for r in mine if "ORG2" in str(r)]
    ids = [row["id"] for row in mine]
    assert ids == sorted(ids, reverse=True)
    by_subject = viewer.get("/api/v1/audit", params={"subject": f"meter:{s.meter_id}"}).json()["items"]
    assert {row["action"] for row in by_subject} == {"attach_meter", "trip"}
    since = viewer.get("/api/v1/audit", params={"since": web.clock().isoformat()}).json()["items"]
    assert [row["reason"] for row in since] == ["audit me"]
    other = web.bearer("admin", web.org("ORG2")).get("/api/v1/audit", params={"limit": 500}).json()["items"]
    assert other and all(s.meter_id not in str(row) and "seed-ORG1" not in str(row) for row in other)
