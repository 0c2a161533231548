"""A trip or close that failed (attempts used up) is queued again while the wallet's policy still wants it, after a
doubling back-off, audited; a decision since (a payment) stops the retries. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, update

from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.headend.commands import QueuedCommand
from powergate.services import prepaid
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records
from powergate.store.tables_commands import meter_commands

YUAN = 1_000_000
WALLET = wallet_code("A-R1")
TZ = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
FLAT = '[[versions]]\neffective_from = "2020-01-01"\nprice = "1.0000"\n'
MINUTE = dt.timedelta(minutes=1)


def setup(engine: Engine) -> int:
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", FLAT, NOON)
        wallet_id = ledger_store.ensure_account(conn, WALLET, NOON)
        for meter_id in ("M-1", "M-2"):
            metering.add_meter(conn, meter_id, wallet_id, "flat", NOON)
        ledger_store.post(conn, recharge_entry("cash:1", WALLET, "cash", 25 * YUAN, NOON), NOON)
        assert prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window="off"), NOON) is None
        ledger_store.post(conn, charge_entry("r1", WALLET, {"energy": 26 * YUAN}, NOON), NOON)
        prepaid.after_ingest(conn, {wallet_id}, NOON)
    prepaid.process_outbox(engine, NOON)
    return wallet_id


def latest(engine: Engine, meter_id: str) -> QueuedCommand:
    with engine.connect() as conn:
        return queue.commands_of(conn, meter_id)[0]


def fail(engine: Engine, command: QueuedCommand, at: dt.datetime) -> None:
    """What the dispatcher writes when the last attempt is not applied: the meter answers, the relay stays."""
    with engine.begin() as conn:
        conn.execute(
            update(meter_commands)
            .where(meter_commands.c.seq == command.seq)
            .values(
                state="failed",
                attempts=command.max_attempts,
                next_attempt_at=at,
                updated_at=at,
                last_error="not applied after 5 attempts: relay closed on the meter",
                version=command.version + 1,
            )
        )


def test_a_failed_trip_is_sent_again_after_a_doubling_back_off_and_audited(engine: Engine) -> None:
    setup(engine)
    trip = latest(engine, "M-1")
    assert trip.command.kind.value == "trip"
    fail(engine, trip, NOON + MINUTE)
    assert prepaid.due_trips(engine, NOON + 2 * MINUTE) == 0
    assert latest(engine, "M-1").seq == trip.seq, "not before the back-off has passed"
    prepaid.due_trips(engine, NOON + 3 * MINUTE)
    first = latest(engine, "M-1")
    assert first.command_id == f"retry:1:{trip.seq}:M-1" and first.command.kind.value == "trip"
    assert first.state is queue.CommandState.PENDING and first.requested_by == prepaid.SYSTEM_ACTOR
    assert latest(engine, "M-2").seq < first.seq, "M-2's trip did not fail: nothing new for it"
    prepaid.due_trips(engine, NOON + 4 * MINUTE)
    assert latest(engine, "M-1").seq == first.seq, "one retry per failed command"

    fail(engine, first, NOON + 5 * MINUTE)  # the retry fails in turn: the next waits twice as long
    prepaid.due_trips(engine, NOON + 8 * MINUTE)
    assert latest(engine, "M-1").seq == first.seq
    prepaid.due_trips(engine, NOON + 9 * MINUTE)
    assert latest(engine, "M-1").command_id == f"retry:2:{first.seq}:M-1"
    with engine.connect() as conn:
        audited = [r for r in audit_records(conn, subject="meter:M-1") if r.action == "relay_retry"]
    assert [r.detail["retry"] for r in audited] == [1, 2]
    assert audited[0].actor == prepaid.SYSTEM_ACTOR and audited[0].detail["failed_command"] == trip.command_id
    assert "relay open" in audited[0].reason


def test_a_payment_after_a_failed_trip_stops_the_trips_and_a_failed_close_is_retried(engine: Engine) -> None:
    setup(engine)
    fail(engine, latest(engine, "M-1"), NOON + MINUTE)
    paid = NOON + 2 * MINUTE
    with engine.begin() as conn:
        ledger_store.post(conn, recharge_entry("pay:1", WALLET, "sandbox", 10 * YUAN, paid), paid)
        prepaid.after_recharge(conn, WALLET, paid)
    prepaid.process_outbox(engine, paid)
    close = latest(engine, "M-1")
    assert close.command.kind.value == "close"
    fail(engine, close, paid + MINUTE)
    prepaid.due_trips(engine, paid + 10 * MINUTE)
    retried = latest(engine, "M-1")
    assert retried.command_id == f"retry:1:{close.seq}:M-1" and retried.command.kind.value == "close"
    assert retried.priority == queue.PRIORITY_URGENT


def test_a_failed_trip_of_a_wallet_that_paid_meanwhile_is_not_retried(engine: Engine) -> None:
    wallet_id = setup(engine)
    trip = latest(engine, "M-1")
    fail(engine, trip, NOON + MINUTE)
    with engine.begin() as conn:  # supply back on in the policy, but its close not queued (yet)
        prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window="off", power_protect=True), NOON)
    prepaid.due_trips(engine, NOON + 10 * MINUTE)
    assert latest(engine, "M-1").seq == trip.seq


def test_the_back_off_doubles_up_to_an_hour() -> None:
    delays = [prepaid.failed_retry_delay(n) for n in (1, 2, 3, 5, 6, 40)]
    assert delays == [
        prepaid.FAILED_RETRY_FIRST,
        2 * prepaid.FAILED_RETRY_FIRST,
        4 * prepaid.FAILED_RETRY_FIRST,
        16 * prepaid.FAILED_RETRY_FIRST,
        dt.timedelta(hours=1),
        dt.timedelta(hours=1),
    ]


def test_the_first_failure_raises_one_meter_alarm_for_the_site_administrators(engine: Engine) -> None:
    from test_notices import NOON as SITE_NOON
    from test_notices import messages
    from test_notices import setup as site_setup

    _site, _account, wallet = site_setup(engine)
    with engine.begin() as conn:
        wallet_id = ledger_store.ensure_account(conn, wallet, SITE_NOON)
        assert prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window="off"), SITE_NOON) is None
        ledger_store.post(conn, charge_entry("r1", wallet, {"energy": YUAN}, SITE_NOON), SITE_NOON)
        prepaid.after_ingest(conn, {wallet_id}, SITE_NOON)
    prepaid.process_outbox(engine, SITE_NOON)
    trip = latest(engine, "M-1")
    assert trip.command.kind.value == "trip"
    fail(engine, trip, SITE_NOON + MINUTE)
    prepaid.due_trips(engine, SITE_NOON + 5 * MINUTE)
    retry = latest(engine, "M-1")
    fail(engine, retry, SITE_NOON + 6 * MINUTE)
    prepaid.due_trips(engine, SITE_NOON + 15 * MINUTE)
    assert latest(engine, "M-1").command_id == f"retry:2:{retry.seq}:M-1"
    alarms = messages(engine, "meter_alarm")
    assert [(key, channel) for key, channel, _ in alarms] == [(f"relay_failed:{trip.seq}", "email")]
    assert "trip command failed" in alarms[0][2] and "1-101" in alarms[0][2]
