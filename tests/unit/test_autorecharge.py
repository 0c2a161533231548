"""Auto-recharge: a bound wallet below its threshold tops up once per crossing through the normal payment path,
whatever the concurrency or restarts; bad bindings are refused naming the field. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from powergate.payments.sandbox import Sandbox
from powergate.services import autorecharge, prepaid
from powergate.store.audit import audit_records
from powergate.store.db import make_engine
from powergate.store.tables import ledger_entries
from powergate.store.tables_autorecharge import autorecharge_bindings, autorecharge_runs
from powergate.store.tables_payments import orders

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from prepaid_b_world import YUAN, Tenant, add_tenant, balance, make_site, spend, top_up

NOW = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(b"0123456789abcdef-autorecharge")


def bound_tenant(engine: Engine, *, amount: int = 30 * YUAN, threshold: int = 20 * YUAN, **site: object) -> Tenant:
    site_id = make_site(engine, NOW, **site)  # type: ignore[arg-type]
    tenant = add_tenant(engine, site_id, "A-1", NOW)
    top_up(engine, tenant, "cashier:seed", 50 * YUAN, NOW)
    with engine.begin() as conn:
        problem = autorecharge.bind(
            conn, tenant.wallet_id, channel="sandbox", amount_micros=amount, threshold_micros=threshold,
            actor="tenant:A-1", now=NOW,
        )  # fmt: skip
        assert problem is None
    return tenant


def auto_orders(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(autorecharge_runs.c.order_no, autorecharge_runs.c.state).order_by("id")).all()
    return [(str(o), str(s)) for o, s in rows]


def recharges(engine: Engine, order_no: str) -> int:
    with engine.connect() as conn:
        query = (
            select(func.count()).select_from(ledger_entries).where(ledger_entries.c.description == f"order {order_no}")
        )
        return int(conn.execute(query).scalar_one())


def test_a_wallet_falling_below_its_threshold_is_topped_up_once_through_the_payment_path(
    engine: Engine, sandbox: Sandbox
) -> None:
    tenant = bound_tenant(engine)
    channels = {"sandbox": sandbox}
    assert autorecharge.run_due(engine, channels, NOW) == 0, "50 yuan is above the 20 yuan threshold"
    spend(engine, tenant, "r1", 35 * YUAN, NOW)  # 15 yuan left
    assert autorecharge.run_due(engine, channels, LATER) == 1
    assert balance(engine, tenant) == 45 * YUAN
    [(order_no, state)] = auto_orders(engine)
    assert state == "credited" and recharges(engine, order_no) == 1
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.state).where(orders.c.order_no == order_no)).scalar_one() == "paid"
        found = autorecharge.binding(conn, tenant.wallet_id)
        assert found == autorecharge.Binding("sandbox", 30 * YUAN, 20 * YUAN, True, LATER)
        actions = [r.action for r in audit_records(conn, subject=tenant.wallet)]
    assert {"bind_autorecharge", "auto_recharge"} <= set(actions)
    assert autorecharge.run_due(engine, channels, LATER + dt.timedelta(minutes=1)) == 0, "one order per crossing"
    spend(engine, tenant, "r2", 30 * YUAN, LATER)  # 15 yuan again: a new crossing
    assert autorecharge.run_due(engine, channels, LATER + dt.timedelta(minutes=2)) == 1
    assert balance(engine, tenant) == 45 * YUAN and len(auto_orders(engine)) == 2


def test_an_amount_too_small_to_lift_the_balance_charges_once_per_crossing(engine: Engine, sandbox: Sandbox) -> None:
    tenant = bound_tenant(engine, amount=2 * YUAN)
    spend(engine, tenant, "r1", 45 * YUAN, NOW)  # 5 yuan
    channels = {"sandbox": sandbox}
    assert autorecharge.run_due(engine, channels, NOW) == 1
    for minute in range(1, 4):
        assert autorecharge.run_due(engine, channels, NOW + dt.timedelta(minutes=minute)) == 0
    assert balance(engine, tenant) == 7 * YUAN
    top_up(engine, tenant, "cashier:2", 20 * YUAN, NOW)  # 27 yuan: re-armed by a manual recharge
    spend(engine, tenant, "r2", 10 * YUAN, NOW)  # 17 yuan: a new crossing
    assert autorecharge.run_due(engine, channels, LATER) + autorecharge.run_due(engine, channels, LATER) == 1


def test_the_recharge_closes_a_tripped_wallet(engine: Engine, sandbox: Sandbox) -> None:
    tenant = bound_tenant(engine)
    spend(engine, tenant, "r1", 51 * YUAN, NOW)  # -1 yuan: tripped
    with engine.connect() as conn:
        assert [r["kind"] for r in prepaid.outbox_rows(conn) if r["kind"] in ("trip", "close")] == ["trip"]
    assert autorecharge.run_due(engine, {"sandbox": sandbox}, LATER) == 1
    with engine.connect() as conn:
        assert [r["kind"] for r in prepaid.outbox_rows(conn) if r["kind"] in ("trip", "close")] == ["trip", "close"]
    assert balance(engine, tenant) == 29 * YUAN


def test_concurrent_runs_place_one_order_for_one_crossing(engine: Engine, sandbox: Sandbox, db_url: str) -> None:
    tenant = bound_tenant(engine)
    spend(engine, tenant, "r1", 40 * YUAN, NOW)
    placed: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        own = make_engine(db_url)
        try:
            placed.append(autorecharge.run_due(own, {"sandbox": sandbox}, LATER))
        except BaseException as error:  # reported below, with the others
            errors.append(error)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sum(placed) == 1
    assert balance(engine, tenant) == 40 * YUAN
    [(order_no, state)] = auto_orders(engine)
    assert state == "credited" and recharges(engine, order_no) == 1


def test_a_crash_after_the_provider_charged_is_resumed_with_the_same_order_and_credited_once(
    engine: Engine, sandbox: Sandbox, db_url: str
) -> None:
    tenant = bound_tenant(engine)
    spend(engine, tenant, "r1", 40 * YUAN, NOW)
    with engine.begin() as conn:  # the claim committed, then the process died before charging
        crossings = int(conn.execute(select(autorecharge_bindings.c.crossings)).scalar_one())
        assert autorecharge._claim(conn, tenant.wallet_id, crossings, NOW) == 1
    [(order_no, state)] = auto_orders(engine)
    assert state == "placed"
    with engine.connect() as conn:
        agreement = str(conn.execute(select(autorecharge_bindings.c.agreement_id)).scalar_one())
    # ... or died after the provider charged it (the money left the payer's account)
    from powergate.domain.payments import OrderRequest

    sandbox.withhold(OrderRequest(order_no, 3_000, "auto-recharge", LATER, "agreement"), agreement, NOW)
    engine.dispose()
    restarted = make_engine(db_url)
    try:
        assert autorecharge.run_due(restarted, {"sandbox": sandbox}, LATER) == 0, "no new crossing is claimed"
        assert autorecharge.run_due(restarted, {"sandbox": sandbox}, LATER) == 0
    finally:
        restarted.dispose()
    assert auto_orders(engine) == [(order_no, "credited")]
    assert recharges(engine, order_no) == 1 and balance(engine, tenant) == 40 * YUAN


def test_a_revoked_agreement_fails_the_run_charges_nothing_and_is_audited(engine: Engine, sandbox: Sandbox) -> None:
    tenant = bound_tenant(engine)
    with engine.connect() as conn:
        agreement = str(conn.execute(select(autorecharge_bindings.c.agreement_id)).scalar_one())
    sandbox.revoke_agreement(agreement)
    spend(engine, tenant, "r1", 40 * YUAN, NOW)
    assert autorecharge.run_due(engine, {"sandbox": sandbox}, LATER) == 1
    [(_, state)] = auto_orders(engine)
    assert state == "failed" and balance(engine, tenant) == 10 * YUAN
    with engine.connect() as conn:
        assert "auto_recharge_failed" in [r.action for r in audit_records(conn, subject=tenant.wallet)]
        assert (
            autorecharge.runs(conn, tenant.wallet_id)[0].message
            == f"provider: agreement {agreement} was revoked by the payer"
        )


def test_an_unbound_wallet_is_not_topped_up(engine: Engine, sandbox: Sandbox) -> None:
    tenant = bound_tenant(engine)
    with engine.begin() as conn:
        autorecharge.unbind(conn, tenant.wallet_id, actor="tenant:A-1", now=NOW)
        assert autorecharge.binding(conn, tenant.wallet_id).active is False  # type: ignore[union-attr]
    spend(engine, tenant, "r1", 40 * YUAN, NOW)
    assert autorecharge.run_due(engine, {"sandbox": sandbox}, LATER) == 0
    assert auto_orders(engine) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"channel": "wechat"}, "channel"),
        ({"channel": "cashier"}, "channel"),
        ({"amount_micros": 12_345}, "amount_micros"),
        ({"amount_micros": 0}, "amount_micros"),
        ({"threshold_micros": -1}, "threshold_micros"),
        ({"amount_micros": 90 * YUAN}, "amount_micros"),  # 20 + 90 > hoarding limit 100
        ({"amount_micros": 1 * YUAN}, "amount_micros"),  # below the 5 yuan minimum purchase
        ({"actor": " "}, "actor"),
    ],
)
def test_a_bad_binding_is_refused_naming_the_field_and_stores_nothing(
    engine: Engine, changes: dict[str, object], field: str
) -> None:
    site_id = make_site(engine, NOW, hoarding_limit_micros=100 * YUAN, min_purchase_micros=5 * YUAN)
    tenant = add_tenant(engine, site_id, "A-1", NOW)
    arguments: dict[str, object] = {
        "channel": "sandbox", "amount_micros": 30 * YUAN, "threshold_micros": 20 * YUAN, "actor": "tenant:A-1",
        **changes,
    }  # fmt: skip
    with engine.begin() as conn:
        problem = autorecharge.bind(conn, tenant.wallet_id, now=NOW, **arguments)  # type: ignore[arg-type]
        assert problem is not None and problem.field == field, problem
        assert autorecharge.binding(conn, tenant.wallet_id) is None


def test_a_site_rule_changed_after_binding_refuses_the_run_without_charging(engine: Engine, sandbox: Sandbox) -> None:
    from powergate.domain.structure import PaymentChannel
    from powergate.services import accounts
    from powergate.store.tables_structure import accounts as accounts_table

    tenant = bound_tenant(engine)
    with engine.begin() as conn:
        site_id = int(conn.execute(select(accounts_table.c.site_id)).scalar_one())
        done = accounts.set_site_payment_policy(
            conn, site_id, channels=[PaymentChannel.CASHIER], min_purchase_micros=0, hoarding_limit_micros=None,
            actor="admin:ops1", reason="sandbox off", now=NOW,
        )  # fmt: skip
        assert not isinstance(done, accounts.Rejected), done
    spend(engine, tenant, "r1", 40 * YUAN, NOW)
    assert autorecharge.run_due(engine, {"sandbox": sandbox}, LATER) == 1
    [(_, state)] = auto_orders(engine)
    assert state == "refused" and balance(engine, tenant) == 10 * YUAN
