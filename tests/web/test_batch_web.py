"""Batch operations over HTTP: the API (create, preview, progress, per-target results, retry, cancel, tags) and
the console page, with roles, organisation scoping and one full flow through the head-end's command queue."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from typing import Any

from api_seed import seed
from web_helpers import assert_forbidden_for, assert_requires_auth

from powergate.headend.commands import Dispatcher, DispatchOptions, RetryPolicy
from powergate.headend.memory import MemoryLink
from powergate.headend.model import MeterEndpoint, Transport
from powergate.services import batch
from powergate.sim.fleet import build_meters


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def trip_body(s: Any, **extra: Any) -> dict[str, Any]:
    return {"operation": "trip", "selection": {"site_id": s.site_id}, "reason": "maintenance", **extra}


def test_a_batch_trip_runs_through_the_command_queue_to_a_result_per_meter(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    preview = operator.post("/api/v1/batches/preview", json={"operation": "trip", "selection": {"site_id": s.site_id}})
    assert preview.status_code == 200 and preview.json()["count"] == 2 and preview.json()["target_kind"] == "meter"
    headers = key()
    made = operator.post("/api/v1/batches", json=trip_body(s, command_valid_s=120), headers=headers)
    assert made.status_code == 201, made.text
    again = operator.post("/api/v1/batches", json=trip_body(s, command_valid_s=120), headers=headers)
    assert again.status_code == 201 and again.json()["id"] == made.json()["id"]
    batch_id = made.json()["id"]
    assert made.json()["state"] == "running" and made.json()["counts"] == {"submitted": 2}

    meters = dict(
        zip((s.meter_id, s.other_meter_id), build_meters(2, seed=1, now_s=int(web.clock().timestamp())), strict=True)
    )
    link = MemoryLink(meters, web.clock)
    link.set_offline(s.other_meter_id, True)
    endpoints = {m: MeterEndpoint(m, Transport.DLT645, v.address, "dtu-web") for m, v in meters.items()}
    dispatcher = Dispatcher(
        web.engine, link, endpoints.get, name="web-test", clock=web.clock,
        options=DispatchOptions(retry=RetryPolicy(offline_recheck_s=5)), rng=random.Random(1),
    )  # fmt: skip
    for _ in range(12):
        asyncio.run(dispatcher.run_once())
        batch.run_due(web.engine, web.clock())
        web.clock.advance(seconds=15)
    done = operator.get(f"/api/v1/batches/{batch_id}").json()
    assert done["state"] == "done" and done["progress_percent"] == 100
    targets = {t["meter_id"]: t for t in operator.get(f"/api/v1/batches/{batch_id}/targets").json()}
    assert targets[s.meter_id]["state"] == "succeeded" and meters[s.meter_id].relay_open()
    failed = targets[s.other_meter_id]
    assert failed["state"] == "failed" and failed["result"].startswith("expired: ")
    # the seed's own trip for the other meter was superseded by the batch's: one command per meter in flight

    link.set_offline(s.other_meter_id, False)
    retried = operator.post(f"/api/v1/batches/{batch_id}/retry", json={"reason": "back online"}, headers=key())
    assert retried.status_code == 200 and retried.json()["counts"] == {"succeeded": 1, "pending": 1}
    for _ in range(4):
        batch.run_due(web.engine, web.clock())
        asyncio.run(dispatcher.run_once())
        batch.run_due(web.engine, web.clock())
    final = operator.get(f"/api/v1/batches/{batch_id}").json()
    assert final["counts"] == {"succeeded": 2} and final["retries"] == 1
    nothing = operator.post(f"/api/v1/batches/{batch_id}/retry", json={"reason": "again"}, headers=key())
    assert nothing.status_code == 409 and "no failed target" in nothing.json()["detail"]
    listed = operator.get("/api/v1/batches").json()["items"]
    assert [b["id"] for b in listed] == [batch_id]


def test_money_batches_are_finance_and_move_money_once(web: Any) -> None:
    s = seed(web)
    finance = web.bearer("finance", s.organisation_id)
    body = {
        "operation": "recharge",
        "selection": {"account_nos": [s.account_no, f"A-{s.code}-2"]},
        "parameters": {"amount_fen": 2_000},
        "reason": "winter subsidy paid by the landlord",
    }
    before = finance.get(f"/api/v1/accounts/{s.account_id}").json()["balance_micros"]
    made = finance.post("/api/v1/batches", json=body, headers=key())
    assert made.status_code == 201, made.text
    assert made.json()["state"] == "done" and made.json()["counts"] == {"succeeded": 2}
    batch.run_due(web.engine, web.clock())
    after = finance.get(f"/api/v1/accounts/{s.account_id}").json()["balance_micros"]
    assert after - before == 20_000_000
    operator = web.client("operator", s.organisation_id)
    refused = operator.post("/api/v1/batches", json=body, headers=key())
    assert refused.status_code == 403 and "finance" in refused.json()["detail"]
    trip_by_finance = finance.post("/api/v1/batches", json=trip_body(s), headers=key())
    assert trip_by_finance.status_code == 403


def test_bad_batches_are_refused_naming_the_field(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    cases = [
        ({"operation": "trip", "selection": {}, "reason": "x"}, "selection"),
        ({"operation": "trip", "selection": {"meter_ids": ["NOPE"]}, "reason": "x"}, "meter_ids"),
        ({**trip_body(s), "operation": "set_power_limit", "parameters": {"power_limit_w": -1}}, "power_limit_w"),
        ({**trip_body(s), "run_at": "2026-12-01T08:00:00"}, "run_at"),
    ]
    for body, field in cases:
        answer = operator.post("/api/v1/batches", json=body, headers=key())
        assert answer.status_code == 422 and field in str(answer.json()["detail"]), (body, answer.text)
    missing_key = operator.post("/api/v1/batches", json=trip_body(s))
    assert missing_key.status_code == 400
    assert operator.get("/api/v1/batches").json()["items"] == []


def test_a_scheduled_batch_can_be_cancelled_and_other_organisations_never_see_it(web: Any) -> None:
    s = seed(web)
    other = seed(web, "ORG2")
    operator = web.client("operator", s.organisation_id)
    later = (web.clock() + dt.timedelta(days=1)).isoformat()
    made = operator.post("/api/v1/batches", json=trip_body(s, run_at=later), headers=key())
    assert made.status_code == 201 and made.json()["state"] == "scheduled"
    batch_id = made.json()["id"]
    stranger = web.client("admin", other.organisation_id)
    assert stranger.get(f"/api/v1/batches/{batch_id}").status_code == 404
    assert stranger.get(f"/api/v1/batches/{batch_id}/targets").status_code == 404
    assert stranger.post(f"/api/v1/batches/{batch_id}/cancel", json={"reason": "x"}, headers=key()).status_code == 404
    assert stranger.get("/api/v1/batches").json()["items"] == []
    foreign = stranger.post("/api/v1/batches", json=trip_body(s), headers=key())
    assert foreign.status_code == 422 and "site_id" in foreign.json()["detail"]
    cancelled = operator.post(f"/api/v1/batches/{batch_id}/cancel", json={"reason": "postponed"}, headers=key())
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["counts"] == {"cancelled": 2}
    again = operator.post(f"/api/v1/batches/{batch_id}/cancel", json={"reason": "again"}, headers=key())
    assert again.status_code == 409
    assert_requires_auth(web, "GET", "/api/v1/batches")
    assert_forbidden_for(web, ["viewer"], "POST", "/api/v1/batches", org_id=s.organisation_id, json=trip_body(s))
    tenant = web.client("tenant", s.organisation_id, account_id=s.account_id)
    assert tenant.get("/api/v1/batches").status_code == 403
    viewer = web.client("viewer", s.organisation_id)
    assert viewer.get(f"/api/v1/batches/{batch_id}").status_code == 200


def test_tags_select_accounts_for_a_batch(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    tagged = operator.put(f"/api/v1/account-tags/{s.account_id}", json={"tags": ["VIP", "north"], "reason": "t"})
    assert tagged.status_code == 200 and tagged.json()["tags"] == ["north", "vip"]
    bad = operator.put(f"/api/v1/account-tags/{s.account_id}", json={"tags": ["no spaces"], "reason": "t"})
    assert bad.status_code == 422 and "tags" in bad.json()["detail"]
    assert operator.get("/api/v1/account-tags").json() == [
        {"tag": "north", "accounts": 1},
        {"tag": "vip", "accounts": 1},
    ]
    preview = operator.post(
        "/api/v1/batches/preview", json={"operation": "power_protect_on", "selection": {"tag": "vip"}}
    )
    assert preview.json()["count"] == 1 and preview.json()["sample"] == [s.account_no]
    other = seed(web, "ORG2")
    stranger = web.client("operator", other.organisation_id)
    assert stranger.put(f"/api/v1/account-tags/{s.account_id}", json={"tags": ["x"], "reason": "t"}).status_code == 404


def test_the_console_batches_page_creates_shows_progress_and_retries(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    page = operator.get("/console/batches")
    assert page.status_code == 200 and "批量操作" in page.text
    english = operator.get("/console/batches", headers={"Accept-Language": "en"})
    assert "Batch operations" in english.text
    counted = operator.get(
        "/console/batches/preview", params={"operation": "trip", "selection": "site", "site_id": s.site_id}
    )
    assert counted.status_code == 200 and "2" in counted.text
    form = {
        "operation": "set_power_limit",
        "selection": "list",
        "list_kind": "meter_ids",
        "list_text": f"{s.meter_id}\n{s.other_meter_id}",
        "power_limit_w": "2200",
        "reason": "dorm rules",
        "max_in_flight_per_link": "4",
        "idempotency_key": str(uuid.uuid4()),
    }
    created = operator.post("/console/batches", data=form)
    assert created.status_code == 303, created.text
    detail_url = created.headers["location"]
    detail = operator.get(detail_url)
    assert detail.status_code == 200 and s.meter_id in detail.text and "hx-get" in detail.text
    progress = operator.get(detail_url + "/progress")
    assert progress.status_code == 200 and "progress" in progress.text
    viewer = web.client("viewer", s.organisation_id)
    assert viewer.get(detail_url).status_code == 200
    assert viewer.post("/console/batches", data=form).status_code == 403
    other = seed(web, "ORG2")
    assert web.client("admin", other.organisation_id).get(detail_url).status_code == 404
    assert_requires_auth(web, "GET", "/console/batches")
