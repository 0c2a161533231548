"""Operations that move money or a relay through the API: idempotent, audited with who and why, exact."""

from __future__ import annotations

import uuid
from typing import Any

from api_seed import seed
from sqlalchemy import func, select

from powergate.store import ledger as ledger_store
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_payments import orders, refunds
from powergate.store.tables_structure import audit_log


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def balance(web: Any, client: Any, account_id: int) -> int:
    return int(client.get(f"/api/v1/accounts/{account_id}").json()["balance_micros"])


def count(web: Any, table: Any, *where: Any) -> int:
    with web.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_a_cashier_recharge_credits_once_however_often_it_is_sent(web: Any) -> None:
    s = seed(web)
    finance = web.client("finance", s.organisation_id)
    before = balance(web, finance, s.account_id)
    headers = key()
    body = {"amount_fen": 5_000, "receipt_no": "R-2001", "method": "card"}
    first = finance.post(f"/api/v1/accounts/{s.account_id}/recharge", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["verdict"] == "accepted" and first.json()["balance_micros"] == before + 50_000_000
    again = finance.post(f"/api/v1/accounts/{s.account_id}/recharge", json=body, headers=headers)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert balance(web, finance, s.account_id) == before + 50_000_000
    order_no = first.json()["order_no"]
    assert count(web, orders, orders.c.order_no == order_no, orders.c.state == "paid") == 1
    detail = finance.get(f"/api/v1/orders/{order_no}").json()
    assert detail["receipt_no"] == "R-2001" and [p["verdict"] for p in detail["payments"]] == ["accepted"]
    missing_key = finance.post(f"/api/v1/accounts/{s.account_id}/recharge", json=body)
    assert missing_key.status_code == 400
    too_much = finance.post(
        f"/api/v1/accounts/{s.account_id}/recharge",
        json={**body, "amount_fen": 0, "receipt_no": "R-2002"},
        headers=key(),
    )
    assert too_much.status_code == 422
    operator = web.bearer("operator", s.organisation_id)
    refused = operator.post(f"/api/v1/accounts/{s.account_id}/recharge", json=body, headers=key())
    assert refused.status_code == 403


def test_a_refund_takes_credit_out_once_and_never_below_zero(web: Any) -> None:
    s = seed(web)
    finance = web.bearer("finance", s.organisation_id)
    before = balance(web, finance, s.account_id)
    headers = key()
    body = {"account_id": s.account_id, "amount_fen": 1_000, "destination": "cash", "reason": "moving out early"}
    done = finance.post("/api/v1/refunds", json=body, headers=headers)
    assert done.status_code == 201, done.text
    assert done.json()["state"] == "succeeded"
    replay = finance.post("/api/v1/refunds", json=body, headers=headers)
    assert replay.json() == done.json()
    assert balance(web, finance, s.account_id) == before - 10_000_000
    assert count(web, refunds) == 1
    listed = finance.get("/api/v1/refunds", params={"account_id": s.account_id}).json()["items"]
    assert [(r["amount_fen"], r["reason"]) for r in listed] == [(1_000, "moving out early")]
    overdrawn = finance.post("/api/v1/refunds", json={**body, "amount_fen": 100_000_000}, headers=key())
    assert overdrawn.status_code == 422 and overdrawn.json()["detail"].startswith("amount_fen:")
    original = finance.post(
        "/api/v1/refunds",
        json={**body, "destination": "original", "order_no": s.order_no, "amount_fen": 500},
        headers=key(),
    )
    assert original.status_code == 201 and original.json()["state"] == "succeeded", original.text
    assert finance.get(f"/api/v1/orders/{s.order_no}").json()["refunded_fen"] == 500
    with web.engine.connect() as conn:
        actions = conn.execute(select(audit_log.c.action).where(audit_log.c.action == "refund")).scalars().all()
    assert len(actions) == 2
    wrong_order = finance.post(
        "/api/v1/refunds",
        json={**body, "account_id": s.other_account_id, "destination": "original", "order_no": s.order_no},
        headers=key(),
    )
    assert wrong_order.status_code == 422 and wrong_order.json()["detail"].startswith("order_no:")


def test_closing_an_account_settles_it_to_zero_and_refunds_the_rest(web: Any) -> None:
    s = seed(web)
    operator = web.bearer("operator", s.organisation_id)
    left = balance(web, operator, s.account_id)
    closed = operator.post(f"/api/v1/accounts/{s.account_id}/close", json={"reason": "lease ended"}, headers=key())
    assert closed.status_code == 200, closed.text
    out = closed.json()
    assert out["settled"] and out["refunded_micros"] + out["written_off_micros"] == left
    assert out["final_readings_wh"] == {s.meter_id: 1_002_000}
    with web.engine.connect() as conn:
        account = operator.get(f"/api/v1/accounts/{s.account_id}").json()
        assert account["state"] == "closed" and account["balance_micros"] == 0
        assert ledger_store.audit(conn) == []
    again = operator.post(f"/api/v1/accounts/{s.account_id}/close", json={"reason": "lease ended"}, headers=key())
    assert again.status_code == 409


def test_a_trip_is_queued_once_with_its_reason_and_shows_its_state(web: Any) -> None:
    s = seed(web)
    operator = web.client("operator", s.organisation_id)
    headers = key()
    url = f"/api/v1/meters/{s.meter_id}/commands/trip"
    queued = operator.post(url, json={"reason": "unpaid rent, per manager"}, headers=headers)
    assert queued.status_code == 202, queued.text
    command = queued.json()["commands"][0]
    assert (command["kind"], command["state"], command["reason"]) == ("trip", "pending", "unpaid rent, per manager")
    assert command["requested_by"].startswith("user:operator") and command["requested_by"].endswith("@ORG1")
    assert operator.post(url, json={"reason": "unpaid rent, per manager"}, headers=headers).json() == queued.json()
    assert count(web, meter_commands, meter_commands.c.meter_id == s.meter_id, meter_commands.c.kind == "trip") == 1
    state = operator.get(f"/api/v1/commands/{command['id']}")
    assert state.status_code == 200 and state.json()["state"] == "pending"
    history = operator.get(f"/api/v1/meters/{s.meter_id}/commands", params={"state": "pending"}).json()["items"]
    assert [c["id"] for c in history] == [command["id"]]
    with web.engine.connect() as conn:
        trail = conn.execute(
            select(audit_log.c.action, audit_log.c.reason).where(audit_log.c.subject == f"meter:{s.meter_id}")
        ).all()
    assert ("trip", "unpaid rent, per manager") in [tuple(r) for r in trail]
    no_reason = operator.post(url, json={}, headers=key())
    assert no_reason.status_code == 422
    close = operator.post(f"/api/v1/meters/{s.meter_id}/commands/close", json={"reason": "paid"}, headers=key())
    assert close.status_code == 202 and close.json()["superseded"] == [command["id"]]


def test_meter_parameters_are_validated_before_anything_is_queued(web: Any) -> None:
    s = seed(web)
    operator = web.bearer("operator", s.organisation_id)
    base = f"/api/v1/meters/{s.meter_id}/commands"
    inverted = operator.post(
        f"{base}/alarm-amounts", json={"alarm1_micros": 10, "alarm2_micros": 20, "reason": "x"}, headers=key()
    )
    assert inverted.status_code == 422 and inverted.json()["detail"].startswith("alarm2_micros:")
    fine_price = operator.post(
        f"{base}/prices", json={"prices_micros": [1_000_050, 1, 1, 1], "reason": "x"}, headers=key()
    )
    assert fine_price.status_code == 422
    limit = operator.post(f"{base}/power-limit", json={"power_limit_w": 4_400, "reason": "dorm rule"}, headers=key())
    assert limit.status_code == 202 and limit.json()["commands"][0]["parameters"] == {"power_limit_w": 4_400}
    prices = operator.post(
        f"{base}/prices",
        json={"prices_micros": [1_350_000, 1_050_000, 650_000, 310_000], "reason": "TOU"},
        headers=key(),
    )
    assert prices.status_code == 202
    assert count(web, meter_commands, meter_commands.c.meter_id == s.meter_id) == 2
    assert operator.post(f"{base}/trip", json={"reason": "x"}, headers=key()).status_code == 202
    unknown = operator.post("/api/v1/meters/NOPE/commands/trip", json={"reason": "x"}, headers=key())
    assert unknown.status_code == 404


def test_power_protect_and_temporary_supply_act_on_every_meter_of_the_account(web: Any) -> None:
    s = seed(web)
    operator = web.bearer("operator", s.organisation_id)
    protect = operator.post(
        f"/api/v1/accounts/{s.account_id}/power-protect", json={"on": True, "reason": "hospital bed"}, headers=key()
    )
    assert protect.status_code == 202, protect.text
    assert [(c["meter_id"], c["kind"]) for c in protect.json()["commands"]] == [(s.meter_id, "protect_on")]
    assert operator.get(f"/api/v1/accounts/{s.account_id}").json()["policy"]["power_protect"] is True
    past = operator.post(
        f"/api/v1/accounts/{s.other_account_id}/temporary-supply",
        json={"until": "2020-01-01T00:00:00+08:00", "reason": "maintenance"},
        headers=key(),
    )
    assert past.status_code == 422 and past.json()["detail"].startswith("until:")
    until = web.clock().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    later = web.clock().replace(year=2030).isoformat()
    supply = operator.post(
        f"/api/v1/accounts/{s.other_account_id}/temporary-supply",
        json={"until": later, "reason": "maintenance"},
        headers=key(),
    )
    assert supply.status_code == 202, supply.text
    assert operator.get(f"/api/v1/accounts/{s.other_account_id}").json()["policy"]["temporary_until"] is not None
    assert until
