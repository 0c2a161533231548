"""Prepaid control in the database: decisions written with the balance, the relay idempotent, deferred trips
due at the window's end, remote operations validated, audited and queued. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.headend.commands import Enqueued, Problem
from powergate.services import prepaid
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.audit import audit_records

YUAN = 1_000_000
WALLET = wallet_code("A-P1")
TZ = ZoneInfo("Asia/Shanghai")
WEDNESDAY_NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
WEDNESDAY_NIGHT = dt.datetime(2026, 11, 25, 21, 0, tzinfo=TZ).astimezone(dt.UTC)
THURSDAY_MORNING = dt.datetime(2026, 11, 26, 8, 0, tzinfo=TZ).astimezone(dt.UTC)
FLAT = '[[versions]]\neffective_from = "2020-01-01"\nprice = "1.0000"\n'
WHO = prepaid.Operator("operator:ops1", "tenant asked")


def setup(engine: Engine, window: str = "off") -> int:
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", FLAT, WEDNESDAY_NOON)
        wallet_id = ledger_store.ensure_account(conn, WALLET, WEDNESDAY_NOON)
        for meter_id in ("M-1", "M-2"):
            metering.add_meter(conn, meter_id, wallet_id, "flat", WEDNESDAY_NOON)
        ledger_store.post(conn, recharge_entry("cash:1", WALLET, "cash", 25 * YUAN, WEDNESDAY_NOON), WEDNESDAY_NOON)
        assert prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window=window), WEDNESDAY_NOON) is None
    return wallet_id


def spend(engine: Engine, key: str, amount_micros: int, now: dt.datetime, wallet_id: int) -> int:
    with engine.begin() as conn:
        ledger_store.post(conn, charge_entry(key, WALLET, {"energy": amount_micros}, now), now)
        return prepaid.after_ingest(conn, {wallet_id}, now)


def test_a_trip_is_relayed_to_every_meter_of_the_wallet_once_even_when_relayed_again(engine: Engine) -> None:
    wallet_id = setup(engine)
    assert spend(engine, "r1", 25 * YUAN, WEDNESDAY_NOON, wallet_id) == 4  # warnings 50, 20, 10 yuan; trip
    first = prepaid.process_outbox(engine, WEDNESDAY_NOON)
    # four rows processed: the trip becomes commands, the three warnings become notifications
    assert (first.rows, first.commands, first.closes) == (4, 2, 0)
    with engine.begin() as conn:  # a crash after enqueue, before marking: the row is seen again
        conn.execute(prepaid.outbox.update().values(processed_at=None))
    again = prepaid.process_outbox(engine, WEDNESDAY_NOON)
    assert (again.rows, again.commands) == (4, 0), "the commands exist: nothing is sent twice"
    with engine.connect() as conn:
        assert len(queue.commands_of(conn, "M-1")) == 1 and len(queue.commands_of(conn, "M-2")) == 1
        assert [r["payload"]["level_micros"] for r in prepaid.outbox_rows(conn, "warning")] == [
            50 * YUAN,
            20 * YUAN,
            10 * YUAN,
        ]


def test_a_payment_queues_the_close_in_its_own_transaction_with_high_priority(engine: Engine) -> None:
    wallet_id = setup(engine)
    spend(engine, "r1", 26 * YUAN, WEDNESDAY_NOON, wallet_id)
    prepaid.process_outbox(engine, WEDNESDAY_NOON)
    with engine.begin() as conn:
        ledger_store.post(conn, recharge_entry("pay:1", WALLET, "sandbox", 10 * YUAN, WEDNESDAY_NOON), WEDNESDAY_NOON)
        assert prepaid.after_recharge(conn, WALLET, WEDNESDAY_NOON) == 1
    relayed = prepaid.process_outbox(engine, WEDNESDAY_NOON)
    assert relayed.closes == 2
    with engine.connect() as conn:
        newest = queue.commands_of(conn, "M-1")[0]
    assert newest.command.kind.value == "close" and newest.priority == queue.PRIORITY_URGENT


def test_a_trip_due_at_night_waits_for_the_morning(engine: Engine) -> None:
    wallet_id = setup(engine, window="default")
    assert spend(engine, "r1", 25 * YUAN, WEDNESDAY_NIGHT, wallet_id) == 4  # three warnings, trip_deferred
    assert prepaid.due_trips(engine, WEDNESDAY_NIGHT + dt.timedelta(hours=3)) == 0
    assert prepaid.process_outbox(engine, WEDNESDAY_NIGHT).commands == 0
    assert prepaid.due_trips(engine, THURSDAY_MORNING) == 1
    assert prepaid.process_outbox(engine, THURSDAY_MORNING).commands == 2
    with engine.connect() as conn:
        state = prepaid.wallet_state(conn, wallet_id)
    assert state is not None and not state.supply_on and state.trip_due_at is None


def test_remote_operations_are_validated_audited_and_queued(engine: Engine) -> None:
    setup(engine)
    done = prepaid.trip(engine, "M-1", WHO, WEDNESDAY_NOON, request_id="req-1")
    assert isinstance(done, Enqueued) and done.created
    replay = prepaid.trip(engine, "M-1", WHO, WEDNESDAY_NOON, request_id="req-1")
    assert isinstance(replay, Enqueued) and not replay.created, "a retried request queues nothing twice"
    state = prepaid.command_state(engine, done.queued.command_id)
    assert state is not None and state.state.value == "pending" and state.requested_by == "operator:ops1"
    assert prepaid.trip(engine, "nope", WHO, WEDNESDAY_NOON) == Problem("meter_id", "no meter 'nope'")
    no_reason = prepaid.close(engine, "M-1", prepaid.Operator("operator:ops1", " "), WEDNESDAY_NOON)
    assert isinstance(no_reason, Problem) and no_reason.field == "reason"
    bad = prepaid.set_alarm_amounts(engine, "M-1", 10 * YUAN, 20 * YUAN, WHO, WEDNESDAY_NOON)
    assert isinstance(bad, Problem) and bad.field == "alarm2_micros"
    assert isinstance(prepaid.set_power_limit(engine, "M-1", 2_000, WHO, WEDNESDAY_NOON), Enqueued)
    prices = (1_200_000, 900_000, 600_000, 300_000)
    assert isinstance(prepaid.push_prices(engine, "M-1", prices, WHO, WEDNESDAY_NOON), Enqueued)
    protected = prepaid.power_protect(engine, WALLET, True, WHO, WEDNESDAY_NOON)
    assert isinstance(protected, list) and len(protected) == 2
    until = WEDNESDAY_NOON + dt.timedelta(hours=4)
    assert isinstance(prepaid.temporary_supply(engine, WALLET, until, WHO, WEDNESDAY_NOON), list)
    with engine.connect() as conn:
        actions = [r.action for r in audit_records(conn)]
        policy = prepaid.get_policy(conn, ledger_store.ensure_account(conn, WALLET, WEDNESDAY_NOON))
    assert actions == ["trip", "set_power_limit", "set_prices", "protect_on", "temporary_supply"]
    assert policy.power_protect and policy.temporary_until == until


def test_a_meter_side_wallet_gets_no_relay_decisions(engine: Engine) -> None:
    wallet_id = setup(engine)
    with engine.begin() as conn:
        prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(billing_mode="meter"), WEDNESDAY_NOON)
    assert spend(engine, "r1", 30 * YUAN, WEDNESDAY_NOON, wallet_id) == 0
    with engine.begin() as conn:
        bad = prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window="late"), WEDNESDAY_NOON)
    assert bad is not None and bad.field == "friendly_window"
