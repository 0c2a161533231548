"""Notice producers (issue 7, item 1): recharge, refund, meter alarm, offline, daily report, reconciliation
discrepancy and run-out forecast become notifications once each, on SQLite and PostgreSQL.

The world: one site in Asia/Shanghai with a tenant account (phone and e-mail) on a flat tariff, one meter in a
room, one site administrator. Each test drives the real services (payments, refunds, head-end status, freeze)
and asserts on the stored messages, then runs the producers again to see that nothing is notified twice.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select, update
from test_freeze import add_reading

from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.headend.status import MeterEvent, StatusRow, record_events, write_status
from powergate.payments.cashier import Cashier
from powergate.services import accounts as structure
from powergate.services import freeze, notices, notify, payments
from powergate.store.metering import add_tariff
from powergate.store.tables import ledger_accounts
from powergate.store.tables_notify import notifications
from powergate.store.tables_prepaid import outbox

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 20)
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
FLAT = (Path(__file__).parents[2] / "docs/examples/tariffs/flat.toml").read_text()


def setup(engine: Engine) -> tuple[int, int, str]:
    """(site, account, wallet code) with meter M-1 in room 1-101 and one administrator recipient."""
    t0 = NOON - dt.timedelta(days=30)
    with engine.begin() as conn:
        add_tariff(conn, "flat", "Flat", "electricity", FLAT, t0)
        org = structure.create_organisation(conn, "ORG", "Org", actor="admin", now=t0)
        assert isinstance(org, int)
        site = structure.create_site(
            conn, org, "Sunrise", timezone="Asia/Shanghai", currency="CNY", channels=[PaymentChannel.CASHIER],
            actor="admin", now=t0,
        )  # fmt: skip
        assert isinstance(site, int)
        building = structure.create_building(conn, site, "B1")
        assert isinstance(building, int)
        floor = structure.create_floor(conn, building, "1F")
        assert isinstance(floor, int)
        room = structure.create_room(conn, floor, "1-101", 5_000, RoomUse.APARTMENT)
        assert isinstance(room, int)
        account = structure.stage_account(
            conn, site, "A-1", "Tenant", phone="13800138000", email="t@example.org", actor="op", now=t0
        )
        assert isinstance(account, int)
        opened = structure.open_account(conn, account, actor="op", reason="lease", now=t0)
        assert isinstance(opened, structure.AccountView)
        attached = structure.attach_meter(
            conn, "M-1", room, account, tariff_id="flat", actor="op", reason="install", now=t0
        )
        assert isinstance(attached, int)
        admin = notify.add_recipient(
            conn, site, "Admin", admin_login="admin", addresses=notify.Addresses(email="admin@example.org")
        )
        assert isinstance(admin, int)
    return site, account, opened.wallet


def offline(meter: str, last_seen: dt.datetime) -> StatusRow:
    return StatusRow(meter, False, last_seen, last_seen, False, None, None)


def messages(engine: Engine, event: str) -> list[tuple[str, str, str]]:
    """(event key, channel, body) of every stored message of one event kind."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(notifications.c.event_key, notifications.c.channel, notifications.c.body)
            .where(notifications.c.event == event)
            .order_by(notifications.c.id)
        ).all()
    return [(str(k), str(c), str(b)) for k, c, b in rows]


CHANNELS: dict[str, payments.PaymentChannel] = {"cashier": Cashier()}
POLICY = payments.PaymentPolicy(frozenset({"cashier"}))


def pay_at_cashier(engine: Engine, wallet: str, amount_fen: int, now: dt.datetime) -> str:
    sale = payments.NewOrder(wallet, amount_fen, "cashier", "cash", operator="op")
    done = payments.pay_at_cashier(engine, CHANNELS, sale, f"R-{now.timestamp():.0f}", POLICY, now)
    assert isinstance(done, payments.Settlement) and done.verdict is payments.Verdict.ACCEPTED, done
    assert done.order_no is not None
    return done.order_no


def test_a_recharge_is_announced_to_the_tenant_once_with_amount_channel_and_balance(engine: Engine) -> None:
    _, _, wallet = setup(engine)
    pay_at_cashier(engine, wallet, 10_000, NOON)
    first = notices.run_notices(engine, NOON)
    assert first.problems == [] and first.events["recharge_received"] == 1
    sent = messages(engine, "recharge_received")
    assert {channel for _, channel, _ in sent} == {"sms", "email"}
    assert all("¥100.00" in body and "A-1" in body for _, _, body in sent)
    again = notices.run_notices(engine, NOON + dt.timedelta(minutes=1))
    assert again.events["recharge_received"] == 0 and len(messages(engine, "recharge_received")) == len(sent)
    with engine.connect() as conn:
        pending = conn.execute(
            select(outbox.c.key).where(outbox.c.kind == "recharged", outbox.c.processed_at.is_(None))
        ).all()
    assert pending == []


def test_a_succeeded_refund_is_announced_once(engine: Engine) -> None:
    _, _, wallet = setup(engine)
    order_no = pay_at_cashier(engine, wallet, 10_000, NOON)
    request = payments.RefundRequest(
        payments.new_refund_no(NOON), wallet, 2_500, payments.Destination.CASH, "moving out", "finance", order_no
    )
    done = payments.refund(engine, CHANNELS, request, NOON + dt.timedelta(minutes=5))
    assert isinstance(done, payments.RefundDone) and done.state == "succeeded", done
    run = notices.run_notices(engine, NOON + dt.timedelta(minutes=6))
    assert run.events["refund"] == 1, run
    assert all("¥25.00" in body for _, _, body in messages(engine, "refund"))
    assert notices.run_notices(engine, NOON + dt.timedelta(minutes=7)).events["refund"] == 0


def test_a_tamper_alarm_reaches_the_administrator_and_a_power_failure_does_not(engine: Engine) -> None:
    setup(engine)
    with engine.begin() as conn:
        stored, rejected = record_events(
            conn,
            [MeterEvent("M-1", "power_fail", NOON, ""), MeterEvent("M-1", "cover_open", NOON, "cover opened")],
            NOON,
        )
    assert stored == 2 and rejected == []
    run = notices.run_notices(engine, NOON)
    assert run.events["meter_alarm"] == 1
    sent = messages(engine, "meter_alarm")
    assert [(key, channel) for key, channel, _ in sent] == [(sent[0][0], "email")]
    assert "cover open" in sent[0][2] and "1-101" in sent[0][2]
    assert notices.run_notices(engine, NOON).events["meter_alarm"] == 0


def test_a_meter_offline_longer_than_the_limit_is_reported_once_per_episode(engine: Engine) -> None:
    setup(engine)
    settings = notices.NoticeSettings(offline_hours=24)
    with engine.begin() as conn:
        write_status(conn, [offline("M-1", NOON)], NOON)
    assert notices.run_notices(engine, NOON + dt.timedelta(hours=23), settings).events["meter_offline"] == 0
    assert notices.run_notices(engine, NOON + dt.timedelta(hours=25), settings).events["meter_offline"] == 1
    assert notices.run_notices(engine, NOON + dt.timedelta(hours=30), settings).events["meter_offline"] == 0
    assert "25" in messages(engine, "meter_offline")[0][2]
    # Back online for a day, then silent again: a new episode, a new notice.
    back = NOON + dt.timedelta(days=3)
    with engine.begin() as conn:
        write_status(conn, [offline("M-1", back)], back)
    assert notices.run_notices(engine, back + dt.timedelta(hours=26), settings).events["meter_offline"] == 1
    assert len(messages(engine, "meter_offline")) == 2


def test_after_the_daily_freeze_the_report_discrepancy_and_runout_notices_go_out_once(engine: Engine) -> None:
    site, _, wallet = setup(engine)
    pay_at_cashier(engine, wallet, 1_000, NOON - dt.timedelta(days=1))  # ¥10, enough for about a day
    midnight = dt.datetime.combine(DAY, dt.time(0), tzinfo=TZ).astimezone(dt.UTC)
    with engine.begin() as conn:
        add_reading(conn, "M-1", midnight, 10_000, None, None, reading_id="M-1@0")
        add_reading(conn, "M-1", midnight + dt.timedelta(days=1), 20_000, None, 6_000_000, reading_id="M-1@1")
    after = midnight + dt.timedelta(days=1, hours=1)
    # Before the freeze: nothing daily.
    assert notices.run_notices(engine, after).events["daily"] == 0
    run = freeze.daily_freeze(engine, site, DAY, after)
    assert run.ran and run.meters == 1
    # Break the books on purpose: a stored balance the journal does not explain.
    with engine.begin() as conn:
        conn.execute(
            update(ledger_accounts)
            .where(ledger_accounts.c.code == wallet)
            .values(balance_micros=ledger_accounts.c.balance_micros - 1)
        )
    first = notices.run_notices(engine, after)
    assert first.events["daily"] == 3, first
    (report,) = messages(engine, "daily_report_ready")
    assert "10.00 kWh" in report[2] and "Sunrise" in report[2]
    assert len(messages(engine, "reconciliation_discrepancy")) == 1
    runout = messages(engine, "runout_forecast")
    assert {channel for _, channel, _ in runout} == {"sms", "email"}
    # Once per site and day, whatever the number of passes.
    assert notices.run_notices(engine, after + dt.timedelta(minutes=5)).events["daily"] == 0
    assert len(messages(engine, "runout_forecast")) == len(runout)
