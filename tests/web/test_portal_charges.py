"""The tenant portal's property charges page (issue 9), on SQLite and PostgreSQL: a tenant sees their own custom
charges (deducted and billed) and property bills in both languages, and never another account's."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from powergate.domain.billing import Basis, Frequency, Schedule
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.services import accounts, billing
from powergate.store import metering
from powergate.web.i18n import format_money
from testkit import FLAT_TARIFF as FLAT

SHANGHAI = ZoneInfo("Asia/Shanghai")
MOVED_IN = dt.datetime(2026, 10, 1, tzinfo=SHANGHAI).astimezone(dt.UTC)
NOV = dt.date(2026, 11, 1)
DEC_1 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=SHANGHAI).astimezone(dt.UTC)
ACTOR = "system:test"


def make_site(web: Any) -> tuple[int, int, dict[str, int]]:
    """Organisation, site, two tenants (A-101 in 50 m², B-102 in 20 m²) with a meter each, and two charge items
    (a per-m² fee deducted from every room's holder, a fixed rent billed to A-101's room) charged for November:
    ``(organisation id, site id, account ids by account number)``."""
    org_id = web.org("ORG1")
    found: dict[str, int] = {}
    room_ids: dict[str, int] = {}
    with web.engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat 1 yuan", "electricity", FLAT, MOVED_IN)
        site = accounts.create_site(
            conn, org_id, "Garden", timezone="Asia/Shanghai", currency="CNY", channels=[PaymentChannel.CASHIER],
            actor=ACTOR, now=MOVED_IN,
        )  # fmt: skip
        assert isinstance(site, int)
        building = accounts.create_building(conn, site, "B1")
        assert isinstance(building, int)
        floor = accounts.create_floor(conn, building, "1F")
        assert isinstance(floor, int)
        for account_no, area_m2 in (("A-101", 50), ("B-102", 20)):
            room = accounts.create_room(conn, floor, account_no, area_m2 * 100, RoomUse.APARTMENT)
            assert isinstance(room, int)
            account = accounts.stage_account(conn, site, account_no, "Tenant", actor=ACTOR, now=MOVED_IN)
            assert isinstance(account, int)
            opened = accounts.open_account(conn, account, actor=ACTOR, reason="move in", now=MOVED_IN)
            assert isinstance(opened, accounts.AccountView)
            attached = accounts.attach_meter(
                conn, f"M-{account_no}", room, account, tariff_id="flat", actor=ACTOR, reason="install", now=MOVED_IN
            )
            assert isinstance(attached, int), attached
            found[account_no], room_ids[account_no] = account, room
        monthly = Schedule(Frequency.MONTHLY, NOV, day=1)
        fee = billing.ChargeItemSpec("PROP", "Property fee", Basis.PER_M2, 2_000_000, monthly)
        rent = billing.ChargeItemSpec(
            "RENT", "Shop rent", Basis.FIXED, 30_000_000, monthly, collection="bill", scope="rooms",
            scope_ids=(room_ids["A-101"],),
        )  # fmt: skip
        for spec in (fee, rent):
            assert isinstance(billing.create_charge_item(conn, site, spec, actor="admin", now=MOVED_IN), int)
    run = billing.run_charges(web.engine, DEC_1)
    assert (run.charged, run.problems) == (3, []), run
    return org_id, site, found


def test_a_tenant_sees_their_own_charges_and_bills_in_both_languages_and_never_another_accounts(web: Any) -> None:
    org_id, site, found = make_site(web)
    with web.engine.connect() as conn:
        (bill,) = billing.list_bills(conn, site, account_id=found["A-101"])
    client = web.client("tenant", org_id, account_id=found["A-101"])
    zh = client.get("/portal/charges", headers={"Accept-Language": "zh-CN"})
    assert zh.status_code == 200, zh.text
    fee, rent = format_money(100_000_000, "zh-CN"), format_money(30_000_000, "zh-CN")
    assert "物业费用" in zh.text and "Property fee" in zh.text and fee in zh.text, zh.text
    assert "Shop rent" in zh.text and rent in zh.text and "已从余额扣除" in zh.text and "计入账单" in zh.text
    assert "2026-11" in zh.text and "30/30" in zh.text and bill.bill_no in zh.text and "草稿" in zh.text
    assert 'href="/portal/charges"' in zh.text
    assert "<script>" not in zh.text and "style=" not in zh.text, "inline script or style (CSP)"
    switched = client.get("/lang/en?next=/portal/charges", follow_redirects=False)
    assert switched.status_code in (302, 303, 307)
    en = client.get("/portal/charges")
    assert en.status_code == 200 and '<html lang="en">' in en.text
    assert "Property charges" in en.text and "Property fee" in en.text and fee in en.text
    assert "Deducted from balance" in en.text and "Billed" in en.text and "Draft" in en.text
    other = web.client("tenant", org_id, account_id=found["B-102"])
    page = other.get("/portal/charges", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    assert format_money(40_000_000, "en") in page.text  # their own 20 m² share of the fee
    assert fee not in page.text and "Shop rent" not in page.text and bill.bill_no not in page.text
