"""The API's sites, buildings, floors, rooms, accounts and meters: create, read, filter, page, operate."""

from __future__ import annotations

from typing import Any

from api_seed import seed
from sqlalchemy import select

from powergate.store.tables import meters
from powergate.store.tables_structure import audit_log


def audit_actions(web: Any, subject: str) -> list[tuple[str, str, str]]:
    with web.engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.reason)
            .where(audit_log.c.subject == subject)
            .order_by(audit_log.c.id)
        )
        return [(r.actor, r.action, r.reason) for r in rows]


def test_an_admin_builds_a_site_down_to_a_room_and_names_are_unique_in_their_parent(web: Any) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    site = admin.post("/api/v1/sites", json={"name": "East Park", "payment_channels": ["cashier", "wechat"]})
    assert site.status_code == 201, site.text
    assert site.json()["payment_channels"] == ["cashier", "wechat"]
    site_id = site.json()["id"]
    again = admin.post("/api/v1/sites", json={"name": "East Park"})
    assert again.status_code == 409 and again.json()["detail"].startswith("name:")
    building = admin.post(f"/api/v1/sites/{site_id}/buildings", json={"name": "B1"}).json()
    floor = admin.post(f"/api/v1/buildings/{building['id']}/floors", json={"name": "3F"}).json()
    room = admin.post(f"/api/v1/floors/{floor['id']}/rooms", json={"number": "301", "area_m2": "35.5", "use": "office"})
    assert room.status_code == 201, room.text
    assert room.json() | {"id": 0} == {
        "id": 0, "number": "301", "area_centi_m2": 3550, "use": "office", "floor_id": floor["id"], "floor": "3F",
        "building_id": building["id"], "building": "B1", "site_id": site_id, "site": "East Park", "meter_ids": [],
    }  # fmt: skip
    bad_area = admin.post(f"/api/v1/floors/{floor['id']}/rooms", json={"number": "302", "area_m2": "3.555"})
    assert bad_area.status_code == 422 and bad_area.json()["detail"].startswith("area_m2:")
    bad_zone = admin.post("/api/v1/sites", json={"name": "West", "timezone": "Mars/Olympus"})
    assert bad_zone.status_code == 422 and bad_zone.json()["detail"].startswith("timezone:")
    assert [a for _, a, _ in audit_actions(web, f"room:{room.json()['id']}")] == ["create_room"]
    rooms = admin.get("/api/v1/rooms", params={"site_id": site_id, "search": "30"}).json()
    assert [r["number"] for r in rooms["items"]] == ["301"]
    operator = web.bearer("operator", org)
    refused = operator.post(f"/api/v1/sites/{site_id}/buildings", json={"name": "B2"})
    assert refused.status_code == 403


def test_lists_page_by_cursor_without_repeats_and_refuse_a_foreign_cursor(web: Any) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    for n in range(5):
        assert admin.post("/api/v1/sites", json={"name": f"Site {n}"}).status_code == 201
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = admin.get("/api/v1/sites", params=params).json()
        seen += [s["name"] for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"Site {n}" for n in range(5)] and pages == 3
    foreign = admin.get("/api/v1/sites", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert foreign.status_code == 400 and foreign.json()["detail"].startswith("cursor:")
    too_many = admin.get("/api/v1/sites", params={"limit": 501})
    assert too_many.status_code == 422


def test_accounts_are_staged_opened_searched_and_read_with_balance_forecast_and_policy(web: Any) -> None:
    s = seed(web)
    operator = web.bearer("operator", s.organisation_id)
    staged = operator.post(
        "/api/v1/accounts",
        json={"site_id": s.site_id, "account_no": "B-7", "name": "Zhang San", "phone": "13800138000"},
    )
    assert staged.status_code == 201, staged.text
    assert staged.json()["state"] == "pre_staged"
    account_id = staged.json()["id"]
    duplicate = operator.post("/api/v1/accounts", json={"site_id": s.site_id, "account_no": "B-7", "name": "x"})
    assert duplicate.status_code == 409 and duplicate.json()["detail"].startswith("account_no:")
    opened = operator.post(f"/api/v1/accounts/{account_id}/open", json={"reason": "tenant moved in"})
    assert opened.status_code == 200 and opened.json()["state"] == "open"
    twice = operator.post(f"/api/v1/accounts/{account_id}/open", json={"reason": "again"})
    assert twice.status_code == 409
    no_reason = operator.post(f"/api/v1/accounts/{account_id}/open", json={"reason": "  "})
    assert no_reason.status_code == 422
    found = operator.get("/api/v1/accounts", params={"search": "13800", "state": "open"}).json()["items"]
    assert [a["account_no"] for a in found] == ["B-7"]
    detail = operator.get(f"/api/v1/accounts/{s.account_id}").json()
    assert detail["balance_micros"] == 100_000_000 - 2_000_000  # 100.00 paid, 2 kWh at 1.0000 deducted
    assert detail["meter_ids"] == [s.meter_id]
    assert detail["forecast"]["seconds_left"] > 0 and detail["forecast"]["text_en"]
    assert detail["policy"]["friendly_window"] == "default"
    low = operator.get("/api/v1/accounts", params={"below_micros": 1}).json()["items"]
    assert {a["account_no"] for a in low} == {f"A-{s.code}-2", "B-7"}  # the empty wallets
    actions = [a for _, a, _ in audit_actions(web, f"account:{account_id}")]
    assert actions == ["stage_account", "open_account"]


def test_the_policy_and_the_tariff_of_an_account_change_with_an_audited_reason(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    policy = operator.put(
        f"/api/v1/accounts/{s.account_id}/policy",
        json={"warning_levels_micros": [10_000_000, 30_000_000], "friendly_window": "22:00-07:00", "reason": "asked"},
    )
    assert policy.status_code == 200, policy.text
    assert policy.json()["warning_levels_micros"] == [30_000_000, 10_000_000]
    bad_window = operator.put(
        f"/api/v1/accounts/{s.account_id}/policy", json={"friendly_window": "night", "reason": "x"}
    )
    assert bad_window.status_code == 422 and bad_window.json()["detail"].startswith("friendly_window:")
    with web.engine.begin() as conn:
        from powergate.store.metering import add_tariff

        add_tariff(conn, "foreign-tariff", "Not ours", "electricity", "id = 'x'", web.clock())
    not_ours = operator.put(
        f"/api/v1/accounts/{s.account_id}/tariff", json={"tariff_id": "foreign-tariff", "reason": "x"}
    )
    assert not_ours.status_code == 422 and not_ours.json()["detail"].startswith("tariff_id:")
    admin = web.bearer("admin", s.organisation_id)
    document = 'id = "tou-2"\nname = "Two"\n[[versions]]\neffective_from = "2025-01-01"\nprice = "0.8000"\n'
    assert admin.post("/api/v1/tariffs", json={"document": document}).status_code == 201
    changed = operator.put(f"/api/v1/accounts/{s.account_id}/tariff", json={"tariff_id": "tou-2", "reason": "new plan"})
    assert changed.status_code == 200 and changed.json()["meter_ids"] == [s.meter_id]
    with web.engine.connect() as conn:
        assert conn.execute(select(meters.c.tariff_id).where(meters.c.id == s.meter_id)).scalar() == "tou-2"
    trail = audit_actions(web, f"account:{s.account_id}")
    assert (trail[-1][1], trail[-1][2]) == ("set_tariff", "new plan") and trail[-1][0].endswith(f"@{s.code}")
    assert ("set_policy", "asked") in [(a, r) for _, a, r in trail]


def test_meters_list_with_status_filter_by_state_and_move_between_accounts(web: Any) -> None:
    s = seed(web)
    operator = web.bearer("operator", s.organisation_id)
    listed = operator.get("/api/v1/meters").json()["items"]
    assert [m["id"] for m in listed] == [s.meter_id, s.other_meter_id]
    first = listed[0]
    assert first["online"] is True and first["relay_open"] is False and first["last_total_wh"] == 1_002_000
    assert [m["id"] for m in operator.get("/api/v1/meters", params={"state": "offline"}).json()["items"]] == [
        s.other_meter_id
    ]
    assert [m["id"] for m in operator.get("/api/v1/meters", params={"search": "102"}).json()["items"]] == [
        s.other_meter_id
    ]
    attached = operator.post(
        "/api/v1/meters",
        json={"meter_id": "M-NEW", "room_id": s.room_id, "account_id": s.account_id, "tariff_id": s.tariff_id,
              "reason": "second meter"},
    )  # fmt: skip
    assert attached.status_code == 201, attached.text
    assert attached.json()["account_no"] == s.account_no and attached.json()["online"] is None
    again = operator.post(
        "/api/v1/meters",
        json={"meter_id": "M-NEW", "room_id": s.room_id, "account_id": s.account_id, "reason": "again"},
    )
    assert again.status_code == 409
    moved = operator.post("/api/v1/meters/M-NEW/move", json={"account_id": s.other_account_id, "reason": "swap"})
    assert moved.status_code == 200 and moved.json()["account_id"] == s.other_account_id
    assert [a for _, a, _ in audit_actions(web, "meter:M-NEW")] == ["attach_meter", "move_meter"]


def test_a_tenant_reads_their_own_meter_readings_only(web: Any) -> None:
    s = seed(web)
    tenant = web.client("tenant", s.organisation_id, account_id=s.account_id)
    readings = tenant.get(f"/api/v1/meters/{s.meter_id}/readings").json()
    assert [(r["id"], r["total_wh"], r["amount_micros"]) for r in readings["items"]] == [
        (f"{s.meter_id}-r1", 1_000_000, None),
        (f"{s.meter_id}-r2", 1_002_000, 2_000_000),
    ]
    newest = tenant.get(
        f"/api/v1/meters/{s.meter_id}/readings", params={"since": (web.clock()).replace(minute=0).isoformat()}
    )
    assert newest.status_code == 200
    naive = tenant.get(f"/api/v1/meters/{s.meter_id}/readings", params={"since": "2026-11-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["detail"].startswith("since:")
    beyond = tenant.get(f"/api/v1/meters/{s.meter_id}/readings", params={"until": "9999-12-31T23:59:59-01:00"})
    assert beyond.status_code == 422 and beyond.json()["detail"].startswith("until:")
    assert tenant.get(f"/api/v1/meters/{s.other_meter_id}/readings").status_code == 404
    assert [a["id"] for a in tenant.get("/api/v1/accounts").json()["items"]] == [s.account_id]
