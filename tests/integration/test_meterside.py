"""Meter-side billing on SQLite and PostgreSQL: recharges reach a virtual meter once, by purchase count.

Each test credits the platform ledger and pushes the recharge in one transaction, runs the real ``Dispatcher``
over the in-memory link to a ``VirtualMeter``, and then checks three witnesses: the ledger, the meter's own
purchase count and balance, and the mirror and its alarms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, event, select

from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.domain.money import MICROS_PER_UNIT
from powergate.headend.commands import CommandState, Dispatcher, DispatchOptions, RetryPolicy
from powergate.headend.commands import get as get_command
from powergate.headend.memory import LinkFaults, MemoryLink
from powergate.headend.model import MeterEndpoint, MeterSnapshot, ReadItem, Transport
from powergate.services import meterside
from powergate.sim.fleet import build_meters
from powergate.sim.meter import VirtualMeter
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables_meterside import meter_side_state

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
YUAN = MICROS_PER_UNIT
METER = "M-1"
WALLET = wallet_code("A-1")


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Rig:
    engine: Engine
    clock: FakeClock
    meter: VirtualMeter
    link: MemoryLink
    endpoint: MeterEndpoint

    def dispatcher(self) -> Dispatcher:
        retry = RetryPolicy(base_delay_s=1, max_delay_s=5, offline_recheck_s=1, lease_s=60)
        return Dispatcher(
            self.engine,
            self.link,
            {METER: self.endpoint}.get,
            name="headend-1",
            clock=self.clock,
            options=DispatchOptions(retry=retry),
            rng=random.Random(3),
        )

    def pay(self, payment_key: str, yuan: int) -> meterside.Pushed | meterside.Problem:
        """What ``settle`` does for a meter-side wallet: the credit and the push in one transaction."""
        with self.engine.begin() as conn:
            entry = recharge_entry(payment_key, WALLET, "sandbox", yuan * YUAN, self.clock())
            ledger_store.post(conn, entry, self.clock())
            return meterside.push_recharge(
                conn, METER, yuan * YUAN, self.clock(), "payment:sandbox", "tenant recharge", payment_key=payment_key
            )

    def run_dispatcher(self, rounds: int = 6) -> None:
        dispatcher = self.dispatcher()

        async def go() -> None:
            await dispatcher.recover()
            for _ in range(rounds):
                await dispatcher.run_once()
                self.clock.advance(2)

        asyncio.run(go())

    def read(self) -> MeterSnapshot:
        snapshot = asyncio.run(self.link.read(self.endpoint, frozenset({ReadItem.PREPAID})))
        assert isinstance(snapshot, MeterSnapshot), snapshot
        return snapshot

    def wallet_micros(self) -> int:
        with self.engine.connect() as conn:
            return ledger_store.balance(conn, WALLET).balance_micros


def make_rig(engine: Engine, faults: LinkFaults | None = None) -> Rig:
    clock = FakeClock()
    meter = build_meters(1, seed=5, now_s=int(NOW.timestamp()))[0]
    meter.balance_micros = 0  # the platform's wallet starts at zero too
    meter.purchase_count = 3  # the meter was sold electricity before it joined the platform
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", "{}", NOW)
        wallet_id = ledger_store.ensure_account(conn, WALLET, NOW)
        metering.add_meter(conn, METER, wallet_id, "flat", NOW)
        meterside.enrol(conn, METER, meter.purchase_count, NOW)
    link = MemoryLink({METER: meter}, clock, faults=faults, timeout_s=0.05)
    endpoint = MeterEndpoint(METER, Transport.DLT645, meter.address, "dtu-1")
    return Rig(engine, clock, meter, link, endpoint)


def test_a_recharge_reaches_the_meter_with_the_next_purchase_count(engine: Engine) -> None:
    rig = make_rig(engine)
    pushed = rig.pay("pay-001", 50)
    assert isinstance(pushed, meterside.Pushed)
    assert (pushed.purchase_count, pushed.created) == (4, True)
    rig.run_dispatcher()
    assert rig.meter.purchase_count == 4
    assert rig.meter.purchased_micros == 50 * YUAN
    with engine.connect() as conn:
        row = get_command(conn, pushed.command_id)
        assert row is not None and row.state is CommandState.VERIFIED


def test_a_replayed_payment_is_never_a_second_credit_on_the_meter(engine: Engine) -> None:
    rig = make_rig(engine)
    first = rig.pay("pay-002", 30)
    rig.run_dispatcher()
    replay = rig.pay("pay-002", 30)
    rig.run_dispatcher()
    assert isinstance(first, meterside.Pushed) and isinstance(replay, meterside.Pushed)
    assert replay.created is False and replay.purchase_count == first.purchase_count == 4
    assert rig.meter.purchase_count == 4
    assert rig.meter.purchased_micros == 30 * YUAN
    assert rig.link.deliveries[first.command_id] == 1
    assert rig.wallet_micros() == 30 * YUAN


def test_lost_replies_are_verified_by_purchase_count_and_never_credit_twice(engine: Engine) -> None:
    rig = make_rig(engine, LinkFaults(drop_reply=0.5, seed=9))
    keys = [f"pay-1{i}" for i in range(5)]
    for key in keys:
        assert isinstance(rig.pay(key, 10), meterside.Pushed)
    rig.run_dispatcher(rounds=60)
    assert rig.meter.purchase_count == 3 + len(keys)
    assert rig.meter.purchased_micros == 50 * YUAN


def test_a_push_without_its_ledger_credit_is_refused_naming_the_payment(engine: Engine) -> None:
    rig = make_rig(engine)
    with engine.begin() as conn:
        problem = meterside.push_recharge(conn, METER, YUAN, NOW, "operator:li", "test", payment_key="no-such-pay")
    assert isinstance(problem, meterside.Problem) and problem.field == "payment_key"
    with engine.connect() as conn:
        next_count = conn.execute(select(meter_side_state.c.next_purchase_count)).scalar_one()
    assert next_count == rig.meter.purchase_count + 1  # nothing allocated


def test_a_push_of_a_different_amount_than_the_credit_is_refused(engine: Engine) -> None:
    make_rig(engine)
    with engine.begin() as conn:
        ledger_store.post(conn, recharge_entry("pay-x", WALLET, "sandbox", 10 * YUAN, NOW), NOW)
        problem = meterside.push_recharge(conn, METER, 20 * YUAN, NOW, "operator:li", "test", payment_key="pay-x")
    assert isinstance(problem, meterside.Problem) and problem.field == "amount_micros"


def test_a_mirrored_snapshot_that_agrees_raises_nothing(engine: Engine) -> None:
    rig = make_rig(engine)
    rig.pay("pay-003", 50)
    rig.run_dispatcher()
    with engine.begin() as conn:
        alarms = meterside.mirror(conn, [rig.read()], rig.clock())
        row = meterside.states(conn)[0]
    assert alarms == []
    assert (row.mirrored_purchase_count, row.last_pushed_purchase_count, row.next_purchase_count) == (4, 4, 5)
    assert row.mirrored_remaining_micros is not None and row.mirrored_remaining_micros > 49 * YUAN


def test_a_recharge_still_queued_is_not_a_mismatch(engine: Engine) -> None:
    rig = make_rig(engine)
    rig.pay("pay-004", 50)  # credited on the platform, not yet on the meter
    with engine.begin() as conn:
        assert meterside.mirror(conn, [rig.read()], rig.clock()) == []


@pytest.mark.parametrize(
    ("purchase_count", "remaining_yuan", "kinds"),
    [
        (4, 50, []),
        (4, 80, ["remaining_amount"]),
        (3, 50, ["purchase_count_behind"]),
        (9, 50, ["purchase_count_ahead"]),
    ],
)
def test_a_mirrored_mismatch_raises_one_alarm_per_day(
    engine: Engine, purchase_count: int, remaining_yuan: int, kinds: list[str]
) -> None:
    rig = make_rig(engine)
    rig.pay("pay-005", 50)
    rig.run_dispatcher()
    with engine.begin() as conn:
        meterside.mirror(conn, [rig.read()], rig.clock())  # the meter showed count 4
    told = MeterSnapshot(METER, rig.clock(), remaining_micros=remaining_yuan * YUAN, purchase_count=purchase_count)
    with engine.begin() as conn:
        raised = meterside.mirror(conn, [told], rig.clock())
        again = meterside.mirror(conn, [told], rig.clock())
        stored = meterside.alarms_of(conn, told.at.date())
    assert [alarm.kind for alarm in raised] == kinds
    assert again == []
    assert [alarm.kind for alarm in stored] == kinds
    for alarm in stored:
        assert alarm.subject == f"meter:{METER}" and str(alarm.actual) in alarm.message


def test_a_batch_mirrors_its_meter_side_meter_with_one_lookup_and_ignores_platform_billed_meters(
    engine: Engine,
) -> None:
    rig = make_rig(engine)
    rig.pay("pay-006", 50)
    rig.run_dispatcher()
    others = [MeterSnapshot(f"P-{i}", rig.clock(), remaining_micros=YUAN, purchase_count=1) for i in range(2_000)]
    first = rig.read()  # count 4: the recharge arrived
    behind = MeterSnapshot(METER, rig.clock(), remaining_micros=50 * YUAN, purchase_count=3)
    statements: list[str] = []

    def listen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", listen)
    try:
        with engine.begin() as conn:
            raised = meterside.mirror(conn, [*others, first, behind], rig.clock())
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    # the second snapshot of the meter in the same batch sees what the first one showed (count 4), as a new read would
    assert [alarm.kind for alarm in raised] == ["purchase_count_behind"]
    lookups = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "meter_side_state" in s]
    assert len(lookups) == 3, lookups  # 2,001 meters in chunks of 1,000 (the amount check reads no meter_side_state)
    with engine.connect() as conn:
        (row,) = meterside.states(conn)
    assert (row.mirrored_purchase_count, row.last_pushed_purchase_count) == (3, 4)


def test_the_sink_wrapper_passes_readings_on_and_mirrors_prepaid_values(engine: Engine) -> None:
    rig = make_rig(engine)
    seen: list[int] = []

    async def inner(batch: object) -> None:
        seen.append(len(batch))  # type: ignore[arg-type]

    sink = meterside.MirrorSink(engine, inner, rig.clock)
    told = MeterSnapshot(METER, rig.clock(), remaining_micros=0, purchase_count=7)
    asyncio.run(sink([told, MeterSnapshot("other", rig.clock(), total_wh=5)]))
    assert seen == [2] and sink.alarms_raised == 1


def test_a_real_payment_to_a_meter_side_wallet_is_pushed_to_its_meter_once(engine: Engine) -> None:
    from powergate.payments.sandbox import Sandbox
    from powergate.services import payments

    rig = make_rig(engine)
    sandbox = Sandbox(b"sandbox-secret-for-the-meter-side-test")
    channels: dict[str, payments.PaymentChannel] = {"sandbox": sandbox}
    policy = payments.PaymentPolicy(frozenset({"sandbox"}))
    placed = payments.create_order(
        engine, channels, payments.NewOrder(WALLET, 5_000, "sandbox", "instant"), policy, NOW
    )
    assert isinstance(placed, payments.OrderPlaced), placed
    headers, body = sandbox.pay(placed.order_no, NOW)
    for expected in (payments.Verdict.ACCEPTED, payments.Verdict.DUPLICATE):  # the provider notifies twice
        outcome = payments.handle_notification(engine, channels, "sandbox", headers, body, NOW)
        assert outcome.verdict is expected, outcome.reason
    rig.run_dispatcher()
    assert rig.meter.purchase_count == 4, "pushed once with the next purchase count"
    assert rig.meter.purchased_micros == 50 * YUAN
    assert rig.wallet_micros() == 50 * YUAN
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []
