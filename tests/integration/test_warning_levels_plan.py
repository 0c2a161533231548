"""Warning levels per tariff plan: a wallet is warned at its own levels if set, else its plan's, else 50 / 20 /
10 yuan; each level fires once per crossing and re-arms on a recharge; every change is audited and bad levels
change nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from prepaid_b_world import YUAN, Tenant, add_tenant, make_site, spend, top_up
from sqlalchemy import Engine

from powergate.services import prepaid
from powergate.store.audit import audit_records

NOW = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)
WHO = prepaid.Operator("admin:ops1", "plan levels for the dormitory")


def warned(engine: Engine, tenant: Tenant) -> list[int]:
    with engine.connect() as conn:
        rows = prepaid.outbox_rows(conn, "warning")
    return [r["payload"]["level_micros"] for r in rows if r["wallet_account_id"] == tenant.wallet_id]


def test_a_wallet_without_its_own_levels_is_warned_at_its_plans_levels_once_per_crossing(engine: Engine) -> None:
    site_id = make_site(engine, NOW)
    tenant = add_tenant(engine, site_id, "A-1", NOW)
    with engine.begin() as conn:
        assert prepaid.set_plan_warning_levels(conn, "flat", [5 * YUAN, 30 * YUAN, 15 * YUAN], WHO, NOW) is None
        assert prepaid.effective_warning_levels(conn, tenant.wallet_id) == ((30 * YUAN, 15 * YUAN, 5 * YUAN), "plan")
    top_up(engine, tenant, "cash:1", 40 * YUAN, NOW)
    spend(engine, tenant, "r1", 12 * YUAN, NOW)  # 28: below 30, not at the default 50 / 20
    spend(engine, tenant, "r2", 1 * YUAN, NOW)  # 27: 30 already fired
    assert warned(engine, tenant) == [30 * YUAN]
    spend(engine, tenant, "r3", 15 * YUAN, NOW)  # 12: 15 fires
    top_up(engine, tenant, "cash:2", 30 * YUAN, NOW)  # 42: both re-armed
    spend(engine, tenant, "r4", 13 * YUAN, NOW)  # 29: 30 fires again
    assert warned(engine, tenant) == [30 * YUAN, 15 * YUAN, 30 * YUAN]


def test_the_wallets_own_levels_win_and_removing_them_falls_back_to_the_plan_then_the_defaults(engine: Engine) -> None:
    site_id = make_site(engine, NOW)
    tenant = add_tenant(engine, site_id, "A-1", NOW)
    with engine.begin() as conn:
        assert prepaid.set_plan_warning_levels(conn, "flat", [30 * YUAN], WHO, NOW) is None
        assert prepaid.set_warning_levels(conn, tenant.wallet_id, [8 * YUAN], WHO, NOW) is None
        assert prepaid.effective_warning_levels(conn, tenant.wallet_id) == ((8 * YUAN,), "wallet")
        # a policy change that does not touch the levels keeps them (power-protect, windows, ...)
        stored = prepaid.get_policy(conn, tenant.wallet_id)
        assert stored.warning_levels_micros == (8 * YUAN,)
    top_up(engine, tenant, "cash:1", 40 * YUAN, NOW)
    spend(engine, tenant, "r1", 35 * YUAN, NOW)  # 5 yuan
    assert warned(engine, tenant) == [8 * YUAN]
    with engine.begin() as conn:
        assert prepaid.set_warning_levels(conn, tenant.wallet_id, None, WHO, NOW) is None
        assert prepaid.effective_warning_levels(conn, tenant.wallet_id) == ((30 * YUAN,), "plan")
        assert prepaid.set_plan_warning_levels(conn, "flat", None, WHO, NOW) is None
        assert prepaid.effective_warning_levels(conn, tenant.wallet_id) == (
            (50 * YUAN, 20 * YUAN, 10 * YUAN),
            "default",
        )
        actions = [(r.action, r.subject, r.detail) for r in audit_records(conn, action="set_warning_levels")]
    assert actions == [
        ("set_warning_levels", "tariff:flat", {"before": None, "after": [30 * YUAN]}),
        ("set_warning_levels", tenant.wallet, {"before": None, "after": [8 * YUAN]}),
        ("set_warning_levels", tenant.wallet, {"before": [8 * YUAN], "after": None}),
        ("set_warning_levels", "tariff:flat", {"before": [30 * YUAN], "after": None}),
    ]


def test_any_number_of_levels_up_to_the_limit(engine: Engine) -> None:
    site_id = make_site(engine, NOW)
    tenant = add_tenant(engine, site_id, "A-1", NOW)
    levels = [level * YUAN for level in range(1, 17)]
    with engine.begin() as conn:
        assert prepaid.set_plan_warning_levels(conn, "flat", levels, WHO, NOW) is None
    top_up(engine, tenant, "cash:1", 20 * YUAN, NOW)
    spend(engine, tenant, "r1", 20 * YUAN, NOW)
    assert warned(engine, tenant) == sorted(levels, reverse=True)


def test_bad_levels_are_refused_naming_the_field_and_change_nothing(engine: Engine) -> None:
    site_id = make_site(engine, NOW)
    tenant = add_tenant(engine, site_id, "A-1", NOW)
    with engine.begin() as conn:
        for levels in ([-1], [5 * YUAN, 5 * YUAN], list(range(17))):
            assert prepaid.set_plan_warning_levels(conn, "flat", levels, WHO, NOW).field == "levels"  # type: ignore[union-attr]
            problem = prepaid.set_warning_levels(conn, tenant.wallet_id, levels, WHO, NOW)
            assert problem is not None and problem.field == "warning_levels_micros"
        assert prepaid.set_plan_warning_levels(conn, "nope", [1], WHO, NOW).field == "tariff_id"  # type: ignore[union-attr]
        unnamed = prepaid.Operator(" ", "x")
        assert prepaid.set_plan_warning_levels(conn, "flat", [1], unnamed, NOW).field == "actor"  # type: ignore[union-attr]
        assert prepaid.plan_warning_levels(conn, "flat") is None
        assert prepaid.effective_warning_levels(conn, tenant.wallet_id)[1] == "default"
        assert audit_records(conn, action="set_warning_levels") == []
