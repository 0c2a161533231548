"""Accounts on SQLite and PostgreSQL: staged and opened in one click, meters attached and moved with their
history, accounts closed with a final reading and a settlement that leaves the ledger exact; all audited."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.ledger import Entry, charge_entry, recharge_entry, refund_entry
from powergate.domain.rating import RatingContext, Reading
from powergate.domain.structure import PaymentChannel, RoomUse, purchase_problem
from powergate.domain.tariff import Tariff, TariffVersion
from powergate.services import accounts as service
from powergate.services.accounts import Rejected, SettlementRefund
from powergate.services.ingest import Ingestor, RatingContexts
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records
from powergate.store.metering import MeterRow
from powergate.store.tables import meters
from powergate.store.tables_structure import meter_assignments

NOW = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=10)
FLAT = Tariff(
    id="flat",
    name="1 yuan/kWh",
    commodity=Commodity.ELECTRICITY,
    currency="CNY",
    versions=(TariffVersion(effective_from=dt.datetime(2020, 1, 1), price_micros=1_000_000),),
)


def ok(value: int | Rejected) -> int:
    assert isinstance(value, int), str(value)
    return value


def setup_room(conn: Connection) -> tuple[int, int]:
    """An organisation, a site (WeChat and cashier, min 10 yuan, max balance 500 yuan) and one room."""
    org = ok(service.create_organisation(conn, "PARK", "Parkview", actor="admin", now=NOW))
    site = ok(
        service.create_site(
            conn,
            org,
            "Gardens",
            timezone="Asia/Shanghai",
            currency="CNY",
            channels=[PaymentChannel.WECHAT, PaymentChannel.CASHIER],
            min_purchase_micros=10_000_000,
            hoarding_limit_micros=500_000_000,
            actor="admin",
            now=NOW,
        )
    )
    building = ok(service.create_building(conn, site, "B1"))
    floor = ok(service.create_floor(conn, building, "3"))
    room = ok(service.create_room(conn, floor, "301", 8_650, RoomUse.APARTMENT))
    metering.add_tariff(conn, FLAT.id, FLAT.name, "electricity", "{}", NOW)
    return site, room


def stage(conn: Connection, site: int, account_no: str) -> int:
    return ok(
        service.stage_account(conn, site, account_no, f"Tenant {account_no}", phone="13800138000", actor="op", now=NOW)
    )


def test_a_pre_staged_account_opens_in_one_click_and_is_audited(engine: Engine) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        account = stage(conn, site, "A-1")
        assert ledger_store.balance(conn, "wallet:PARK/A-1").balance_micros == 0
        opened = service.open_account(conn, account, actor="op-7", reason="tenant signed the lease", now=NOW)
        assert not isinstance(opened, Rejected)
        assert (opened.state.value, opened.wallet) == ("open", "wallet:PARK/A-1")
        again = service.open_account(conn, account, actor="op-7", reason="twice", now=NOW)
        assert again == Rejected("account", "account A-1 is open, not pre_staged")
        records = audit_records(conn, subject=f"account:{account}")
        assert [(r.action, r.actor, r.reason) for r in records] == [
            ("stage_account", "op", "new account"),
            ("open_account", "op-7", "tenant signed the lease"),
        ]


@pytest.mark.parametrize(
    ("account_no", "phone", "expected"),
    [
        ("A-1", None, Rejected("account_no", "'A-1' exists already in organisation PARK")),
        ("A 2", None, Rejected("account_no", "'A 2' must be 1-32 letters, digits, '-' or '_' and start with a "
                                             "letter or digit")),
        ("A-3", "12345", Rejected("phone", "'12345' is not a phone number (11-digit mobile such as 13800138000, "
                                           "or 010-12345678)")),
    ],
)  # fmt: skip
def test_staging_refuses_bad_input_naming_the_field(
    engine: Engine, account_no: str, phone: str | None, expected: Rejected
) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        stage(conn, site, "A-1")
        assert service.stage_account(conn, site, account_no, "X", phone=phone, actor="op", now=NOW) == expected


def test_a_meter_moves_to_a_new_tenant_keeping_its_history_and_later_readings_charge_the_new_wallet(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        site, room = setup_room(conn)
        old, new = stage(conn, site, "A-1"), stage(conn, site, "A-2")
        ok(service.attach_meter(conn, "M-1", room, old, tariff_id="flat", actor="op", reason="install", now=NOW))
        again = service.attach_meter(conn, "M-1", room, new, actor="op", reason="x", now=NOW)
        assert again == Rejected("meter", "meter M-1 is attached already; use move_meter")
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    ingestor.ingest([reading(0, 1000_00), reading(1, 1010_00)])
    with engine.begin() as conn:
        moved = service.move_meter(conn, "M-1", new, actor="op", reason="tenant changed", now=LATER)
        assert isinstance(moved, int)
        history = service.meter_history(conn, "M-1")
        assert [(h.account_id, h.valid_to, h.start_total_wh, h.end_total_wh) for h in history] == [
            (old, LATER, None, 1_010_000),
            (new, None, 1_010_000, None),
        ]
        assert service.move_meter(conn, "M-1", new, actor="op", reason="x", now=LATER) == Rejected(
            "account", "meter M-1 belongs to account A-2 already"
        )
        [record] = audit_records(conn, action="move_meter")
        assert record.detail["handover_total_wh"] == 1_010_000
    ingestor.ingest([reading(2, 1015_00, day=5)])
    with engine.connect() as conn:
        assert ledger_store.balance(conn, "wallet:PARK/A-1").balance_micros == -10_000_000
        assert ledger_store.balance(conn, "wallet:PARK/A-2").balance_micros == -5_000_000
        assert ledger_store.audit(conn) == []


def test_the_database_refuses_a_second_open_assignment_of_one_meter(engine: Engine) -> None:
    with engine.begin() as conn:
        site, room = setup_room(conn)
        account = stage(conn, site, "A-1")
        ok(service.attach_meter(conn, "M-1", room, account, tariff_id="flat", actor="op", reason="install", now=NOW))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(meter_assignments).values(meter_id="M-1", room_id=room, account_id=account, valid_from=NOW))


def cash_refund(engine: Engine) -> service.RefundFn:
    """A fake cashier: posts the ledger refund in cash, in its own transaction, like the payments service."""

    def pay(request: SettlementRefund) -> object:
        with engine.begin() as conn:
            entry = refund_entry(request.key, request.wallet, "cashier", request.amount_micros, request.at)
            return ledger_store.post(conn, entry, request.at)

    return pay


def test_closing_an_account_takes_the_final_reading_refunds_what_remains_and_keeps_the_ledger_exact(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        site, room = setup_room(conn)
        account = stage(conn, site, "A-1")
        service.open_account(conn, account, actor="op", reason="lease", now=NOW)
        ok(service.attach_meter(conn, "M-1", room, account, tariff_id="flat", actor="op", reason="install", now=NOW))
        ledger_store.post(conn, recharge_entry("wechat:T1", "wallet:PARK/A-1", "wechat", 100_000_000, NOW), NOW)
    Ingestor(engine, contexts(), clock=lambda: NOW).ingest([reading(0, 1000_00), reading(1, 1012_34)])
    # 12.34 kWh at 1 yuan plus a sub-fen charge: 100 - 12.34 - 0.000321 = 87.659679 yuan left
    with engine.begin() as conn:
        ledger_store.post(conn, charge("fee:1", 321), NOW)
    closed = service.close_account(
        engine, account, refund=cash_refund(engine), actor="op", reason="moved out", now=LATER
    )
    assert closed == service.Closed(account, {"M-1": 1_012_340}, 87_659_679, 87_650_000, 9_679, 0)
    with engine.connect() as conn:
        assert ledger_store.balance(conn, "wallet:PARK/A-1").balance_micros == 0
        assert ledger_store.balance(conn, "clearing:cashier").balance_micros == 87_650_000
        assert ledger_store.balance(conn, "revenue:rounding").balance_micros == 9_679
        assert ledger_store.audit(conn) == []
        assert [r.action for r in audit_records(conn, subject=f"account:{account}")][-2:] == [
            "close_account",
            "settle_account",
        ]
        assert service.meter_history(conn, "M-1")[0].end_total_wh == 1_012_340
    again = service.close_account(engine, account, refund=cash_refund(engine), actor="op", reason="x", now=LATER)
    assert again == Rejected("account", "account A-1 is closed and settled already")


def test_a_failed_refund_leaves_the_account_closed_and_closing_again_finishes_the_settlement(engine: Engine) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        account = stage(conn, site, "A-1")
        ledger_store.post(conn, recharge_entry("wechat:T1", "wallet:PARK/A-1", "wechat", 30_000_000, NOW), NOW)

    def unreachable(_request: SettlementRefund) -> object:
        return "provider down"

    first = service.close_account(engine, account, refund=unreachable, actor="op", reason="left", now=LATER)
    assert isinstance(first, service.Closed) and not first.settled and first.left_micros == 30_000_000
    second = service.close_account(engine, account, refund=cash_refund(engine), actor="op", reason="retry", now=LATER)
    assert isinstance(second, service.Closed) and second.settled and second.refunded_micros == 30_000_000
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []


def test_an_account_in_debt_is_not_closed(engine: Engine) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        account = stage(conn, site, "A-1")
        ledger_store.post(conn, charge("fee:1", 2_500_000), NOW)
    closed = service.close_account(engine, account, refund=cash_refund(engine), actor="op", reason="left", now=LATER)
    assert closed == Rejected("balance", "the wallet of A-1 owes ¥2.50; collect it before closing")
    with engine.connect() as conn:
        view = service.account_view(conn, account)
        assert view is not None and view.state.value == "pre_staged"


def test_the_site_payment_policy_limits_purchases_and_changes_are_audited(engine: Engine) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        account = stage(conn, site, "A-1")
        policy = service.policy_for_wallet(conn, "wallet:PARK/A-1")
        assert policy == service.site_payment_policy(conn, site)
        assert policy is not None
        assert policy.channels == {PaymentChannel.WECHAT, PaymentChannel.CASHIER}
        assert purchase_problem(policy, "wechat", 50_000_000, 0) is None
        assert str(purchase_problem(policy, "alipay", 50_000_000, 0)) == (
            "channel: 'alipay' is not enabled at this site (enabled: cashier, wechat)"
        )
        assert "below the minimum purchase of ¥10.00" in str(purchase_problem(policy, "wechat", 5_000_000, 0))
        assert "at most ¥20.00 can be bought now" in str(purchase_problem(policy, "wechat", 50_000_000, 480_000_000))
        changed = service.set_site_payment_policy(
            conn, site, channels=[PaymentChannel.ALIPAY], min_purchase_micros=0, hoarding_limit_micros=None,
            actor="admin", reason="new contract", now=NOW,
        )  # fmt: skip
        assert not isinstance(changed, Rejected)
        assert changed.channels == {PaymentChannel.ALIPAY} and changed.hoarding_limit_micros is None
        [record] = audit_records(conn, action="set_payment_policy")
        assert record.detail["before"]["hoarding_limit_micros"] == 500_000_000
        assert service.account_by_wallet(conn, "wallet:PARK/A-1") == service.account_view(conn, account)


def test_places_refuse_duplicates_and_unknown_parents(engine: Engine) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        assert service.create_building(conn, site, "B1") == Rejected("name", "'B1' exists already in site " + str(site))
        assert service.create_floor(conn, 999, "1") == Rejected("building_id", "no building 999")
        bad_zone = service.create_site(
            conn, 1, "Other", timezone="Mars/Olympus", currency="CNY", channels=[], actor="a", now=NOW
        )
        assert bad_zone == Rejected("timezone", "'Mars/Olympus' is not an IANA time zone such as Asia/Shanghai")
        assert conn.execute(select(meters)).first() is None


def contexts() -> RatingContexts:
    def build(_conn: Connection, meter: MeterRow) -> RatingContext:
        return RatingContext(FLAT, SiteCalendar.china(), ZoneInfo(meter.timezone))

    return RatingContexts(build)


def reading(n: int, total_centi_kwh: int, day: int = 2) -> Reading:
    at = dt.datetime(2026, 11, day, n, 0, tzinfo=dt.UTC)
    return Reading(f"M-1:{day}:{n}", "M-1", at, total_centi_kwh * 10)


def charge(key: str, amount_micros: int) -> Entry:

    entry = charge_entry(key, "wallet:PARK/A-1", {"fee": amount_micros}, NOW)
    assert entry is not None
    return entry


def test_closing_through_the_payments_service_refunds_in_cash_once(engine: Engine) -> None:
    with engine.begin() as conn:
        site, _ = setup_room(conn)
        account = stage(conn, site, "A-1")
        ledger_store.post(conn, recharge_entry("wechat:T1", "wallet:PARK/A-1", "wechat", 42_000_000, NOW), NOW)
    refund = service.payments_cash_refund(engine, {})
    closed = service.close_account(engine, account, refund=refund, actor="op", reason="left", now=LATER)
    assert isinstance(closed, service.Closed) and closed.settled and closed.refunded_micros == 42_000_000
    with engine.connect() as conn:
        assert ledger_store.balance(conn, "wallet:PARK/A-1").balance_micros == 0
        assert ledger_store.audit(conn) == []
