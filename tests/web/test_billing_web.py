"""Property billing over HTTP: charge items, apportionment rules and months (with how each share was computed),
bills through their life cycle and paid at the cashier, arrears and Excel exports; the console page; roles,
tenants seeing only their own, and other organisations seeing nothing."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from api_seed import seed
from openpyxl import load_workbook
from web_helpers import assert_requires_auth

from powergate.domain.rating import Reading
from powergate.domain.structure import RoomUse
from powergate.services import accounts, freeze
from powergate.services.ingest import Ingestor
from powergate.store import ledger as ledger_store

TZ = ZoneInfo("Asia/Shanghai")
NOV = dt.date(2026, 11, 1)


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def local(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=TZ).astimezone(dt.UTC)


def master_meter(web: Any, s: Any) -> str:
    """A public-area master meter (on a house account) with a reading at every local midnight of November and
    December 1st, and November frozen day by day."""
    meter = f"M-{s.code}-MASTER"
    with web.engine.begin() as conn:
        house = accounts.stage_account(conn, s.site_id, f"H-{s.code}", "House", actor="t", now=web.clock())
        assert isinstance(house, int), house
        accounts.open_account(conn, house, actor="t", reason="t", now=web.clock())
        room = accounts.create_room(conn, s.floor_id, "PUBLIC", 0, RoomUse.SHOP)
        assert isinstance(room, int), room
        done = accounts.attach_meter(
            conn,
            meter,
            room,
            house,
            tariff_id=s.tariff_id,
            actor="t",
            reason="t",
            now=local(NOV) - dt.timedelta(days=1),
        )
        assert isinstance(done, int), done
    readings = [
        Reading(f"{meter}@{day}", meter, local(NOV + dt.timedelta(days=day)), 1_000_000 + day * 12_345)
        for day in range(31)
    ]
    report = Ingestor(web.engine, clock=web.clock).ingest(readings)
    assert report.rejected == [], report.rejected
    for day in range(30):
        ran = freeze.daily_freeze(web.engine, s.site_id, NOV + dt.timedelta(days=day), web.clock())
        assert ran.ran, ran
    return meter


def test_property_billing_full_flow_over_the_api(web: Any) -> None:
    s = seed(web)
    web.clock.set(dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC))
    master = master_meter(web, s)
    operator = web.bearer("operator", s.organisation_id)
    finance = web.bearer("finance", s.organisation_id)

    item = operator.post(
        "/api/v1/billing/charge-items",
        json={
            "site_id": s.site_id, "code": "PROP", "name": "物业费 property fee", "basis": "per_m2",
            "rate_micros": 2_500_000, "frequency": "monthly", "start_on": "2026-11-01", "collection": "bill",
        },
    )  # fmt: skip
    assert item.status_code == 201, item.text
    duplicate = operator.post("/api/v1/billing/charge-items", json={**item.json(), "rate_micros": 1})
    assert duplicate.status_code == 409
    charged = operator.post("/api/v1/billing/charges/run", json={"site_id": s.site_id}, headers=key())
    assert charged.status_code == 200 and charged.json()["charged"] == 3, charged.text  # the house room too (0 m²)

    rule = operator.post(
        "/api/v1/billing/rules",
        json={
            "site_id": s.site_id, "code": "LIFT", "name": "电梯 lift", "master_meter_id": master, "method": "ratio",
            "participants": [{"account_id": s.account_id, "parts": 3}, {"account_id": s.other_account_id, "parts": 1}],
            "price_micros_per_kwh": 1_000_000, "valid_from": "2026-11-01", "reason": "lift power",
        },
    )  # fmt: skip
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    month = operator.post(f"/api/v1/billing/rules/{rule_id}/runs", json={"month": "2026-11"}, headers=key())
    assert month.status_code == 200, month.text
    result = month.json()
    shares = result["shares"]
    assert sum(sh["amount_micros"] for sh in shares) == result["run"]["amount_micros"] > 0
    assert [sh["weight"] for sh in shares] == [3, 1] and "ratio 3/4" in shares[0]["how"]
    again = operator.post(f"/api/v1/billing/rules/{rule_id}/runs", json={"month": "2026-11"}, headers=key())
    assert again.json() == result, "a month is computed once"

    bills = finance.get("/api/v1/billing/bills", params={"site_id": s.site_id}).json()
    assert {b["account_id"] for b in bills} == {s.account_id, s.other_account_id}
    bill_no = next(b["bill_no"] for b in bills if b["account_id"] == s.account_id)
    assert finance.post(f"/api/v1/billing/bills/{bill_no}/issue", json={"reason": "x"}).status_code == 409
    assert operator.post(f"/api/v1/billing/bills/{bill_no}/confirm", json={"reason": "x"}).status_code == 403
    assert finance.post(f"/api/v1/billing/bills/{bill_no}/confirm", json={"reason": "checked"}).status_code == 200
    issued = finance.post(f"/api/v1/billing/bills/{bill_no}/issue", json={"reason": "monthly run"})
    assert issued.status_code == 200 and issued.json()["state"] == "issued" and issued.json()["due_on"]
    arrears = finance.get("/api/v1/billing/arrears").json()
    assert [b["bill_no"] for b in arrears] == [bill_no]
    sheet = finance.get("/api/v1/billing/arrears.xlsx", params={"lang": "en"})
    assert sheet.status_code == 200
    rows = list(load_workbook(io.BytesIO(sheet.content)).active.iter_rows(values_only=True))
    assert rows[1][0] == bill_no and rows[-1][0] == "total"
    headers = key()
    paid = finance.post(f"/api/v1/billing/bills/{bill_no}/pay", json={"receipt_no": "R-BILL-1"}, headers=headers)
    assert paid.status_code == 200 and paid.json()["state"] == "paid", paid.text
    replay = finance.post(f"/api/v1/billing/bills/{bill_no}/pay", json={"receipt_no": "R-BILL-1"}, headers=headers)
    assert replay.json() == paid.json()
    twice = finance.post(f"/api/v1/billing/bills/{bill_no}/pay", json={"receipt_no": "R-BILL-2"}, headers=key())
    assert twice.status_code == 409
    assert finance.get("/api/v1/billing/arrears").json() == []
    with web.engine.connect() as conn:
        assert ledger_store.audit(conn) == []

    tenant = web.bearer("tenant", s.organisation_id, account_id=s.account_id)
    own = tenant.get("/api/v1/billing/bills").json()
    assert {b["account_id"] for b in own} == {s.account_id}
    other_bill = next(b["bill_no"] for b in bills if b["account_id"] == s.other_account_id)
    assert tenant.get(f"/api/v1/billing/bills/{other_bill}").status_code == 404
    tenant_shares = tenant.get("/api/v1/billing/shares", params={"account_id": s.other_account_id}).json()
    assert len(tenant_shares) == 1 and tenant_shares[0]["weight"] == 3 and tenant_shares[0]["how"]
    assert tenant.get(f"/api/v1/billing/rules/{rule_id}").status_code == 403
    assert tenant.post(f"/api/v1/billing/bills/{bill_no}/void", json={"reason": "x"}).status_code == 403

    stranger = web.bearer("admin", seed(web, "ORG2").organisation_id)
    assert stranger.get(f"/api/v1/billing/bills/{bill_no}").status_code == 404
    assert stranger.get(f"/api/v1/billing/rules/{rule_id}").status_code == 404
    assert stranger.get(f"/api/v1/billing/rules/{rule_id}/runs/2026-11").status_code == 404
    assert stranger.post(f"/api/v1/billing/bills/{other_bill}/void", json={"reason": "x"}).status_code == 404
    assert stranger.get("/api/v1/billing/charge-items").json() == []
    assert stranger.post("/api/v1/billing/charges/run", json={"site_id": s.site_id}, headers=key()).status_code == 404
    assert_requires_auth(web, "GET", "/api/v1/billing/bills")


def test_the_console_billing_page_shows_items_shares_bills_and_moves_a_bill(web: Any) -> None:
    s = seed(web)
    web.clock.set(dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC))
    master = master_meter(web, s)
    operator = web.bearer("operator", s.organisation_id)
    operator.post(
        "/api/v1/billing/charge-items",
        json={
            "site_id": s.site_id, "code": "SVC", "name": "Service fee", "basis": "fixed", "rate_micros": 30_000_000,
            "frequency": "monthly", "start_on": "2026-11-01", "collection": "bill",
        },
    )  # fmt: skip
    operator.post("/api/v1/billing/charges/run", json={"site_id": s.site_id}, headers=key())
    operator.post(
        "/api/v1/billing/rules",
        json={
            "site_id": s.site_id, "code": "HALL", "name": "Hall lights", "master_meter_id": master, "method": "area",
            "participants": [{"account_id": s.account_id}, {"account_id": s.other_account_id}],
            "valid_from": "2026-11-01", "reason": "hall",
        },
    )  # fmt: skip
    console = web.client("operator", s.organisation_id)
    rule_id = operator.get("/api/v1/billing/rules").json()[0]["id"]
    ran = console.post(
        f"/console/billing/rules/{rule_id}/run", data={"month": "2026-11", "idempotency_key": str(uuid.uuid4())}
    )
    assert ran.status_code == 303 and "done=apportioned" in ran.headers["location"], ran.text
    page = console.get(ran.headers["location"])
    assert page.status_code == 200
    assert "物业计费" in page.text and "Service fee" in page.text and "Hall lights" in page.text
    assert "area 3550/7550" in page.text  # the share says how it was computed (room areas 35.50 + 40.00 m²)
    english = console.get("/console/billing", headers={"Accept-Language": "en"})
    assert "Property billing" in english.text and "Arrears" in english.text
    bill_no = operator.get("/api/v1/billing/bills").json()[0]["bill_no"]
    assert (
        console.post(
            f"/console/billing/bills/{bill_no}/confirm", data={"reason": "ok", "idempotency_key": "k1"}
        ).status_code
        == 403
    )
    finance = web.client("finance", s.organisation_id)
    moved = finance.post(f"/console/billing/bills/{bill_no}/confirm", data={"reason": "ok", "idempotency_key": "k2"})
    assert moved.status_code == 303
    bill_page = finance.get(moved.headers["location"])
    assert bill_page.status_code == 200 and "已确认" in bill_page.text
    sheet = finance.get("/console/billing/export/bills.xlsx", params={"site_id": s.site_id})
    assert sheet.status_code == 200 and load_workbook(io.BytesIO(sheet.content)).active is not None
    other = web.client("admin", seed(web, "ORG2").organisation_id)
    assert other.get(f"/console/billing/bills/{bill_no}").status_code == 404
    assert other.get("/console/billing", params={"site_id": s.site_id}).status_code == 404
    assert_requires_auth(web, "GET", "/console/billing")
