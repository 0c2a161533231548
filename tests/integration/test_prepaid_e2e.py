"""THE prepaid acceptance test: the loop closes over real protocols, with no one calling anything by hand.

A virtual DL/T 645 meter behind a simulated DTU dials into the head-end over real TCP. Its wallet is billed on
the platform: every reading is rated into the ledger and the balance policy is evaluated in the same
transaction. The balance runs down (high load, a price of 10 yuan/kWh, a starting balance of 4 yuan, warning
levels 3 / 2 / 1 yuan, no friendly window so that the test never depends on the hour it runs at; windows have
their own unit tests): each warning fires once, the relay trips at zero (read from the meter itself), and a
payment through ``services.payments`` (the sandbox channel, signed notification and all) restores supply,
again confirmed by the meter's own relay. The ledger audit is exact. Runs on SQLite and PostgreSQL (~20 s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from sqlalchemy import Engine, func, select

from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.headend.commands import CommandState, DispatchOptions
from powergate.headend.model import MeterEndpoint, ReadItem, Transport
from powergate.headend.scheduler import ScheduleConfig
from powergate.headend.status import save_endpoints
from powergate.payments.sandbox import Sandbox
from powergate.services import payments, prepaid
from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
from powergate.sim.fleet import Fleet, FleetOptions
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import readings
from testkit import free_port

YUAN = 1_000_000
SEED = 11
WALLET = wallet_code("A-E2E")
TARIFF = """
id = "ten"
name = "10 yuan/kWh"
commodity = "electricity"
currency = "CNY"
[[versions]]
effective_from = "2020-01-01"
price = "10.0000"
"""


def prepare(engine: Engine, fleet: Fleet, now: dt.datetime) -> MeterEndpoint:
    meter = fleet.meters[0]
    meter.balance_micros = 10**12  # the meter's own (meter-side) balance must never be what trips it here
    endpoint = MeterEndpoint(f"M-{meter.address}", Transport.DLT645, meter.address, f"86{SEED % 1000:03d}{0:010d}")
    with engine.begin() as conn:
        metering.add_tariff(conn, "ten", "10 yuan/kWh", "electricity", TARIFF, now)
        wallet_id = ledger_store.ensure_account(conn, WALLET, now)
        metering.add_meter(conn, endpoint.meter_id, wallet_id, "ten", now, max_power_w=20_000_000)
        ledger_store.post(conn, recharge_entry("cash:e2e", WALLET, "cash", 4 * YUAN, now), now)
        policy = prepaid.WalletPolicy((3 * YUAN, 2 * YUAN, 1 * YUAN), reconnect_micros=0, friendly_window="off")
        assert prepaid.set_policy(conn, wallet_id, policy, now) is None
        save_endpoints(conn, [endpoint])
    return endpoint


async def until(condition: object, timeout_s: float, what: str) -> float:
    """Poll ``condition()`` every 10 ms; the seconds it took. Fails naming ``what`` after ``timeout_s``."""
    assert callable(condition)
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout_s, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


def queue_settled(engine: Engine) -> bool:
    with engine.connect() as conn:
        return not any(n for state, n in queue.count_by_state(conn).items() if state in queue.OPEN)


def pay(engine: Engine, sandbox: Sandbox, amount_fen: int) -> payments.Settlement:
    now = dt.datetime.now(dt.UTC)
    channels: dict[str, payments.PaymentChannel] = {"sandbox": sandbox}
    policy = payments.PaymentPolicy(frozenset({"sandbox"}))
    order = payments.NewOrder(WALLET, amount_fen, "sandbox", "instant")
    placed = payments.create_order(engine, channels, order, policy, now)
    assert isinstance(placed, payments.OrderPlaced), placed
    headers, body = sandbox.pay(placed.order_no, now)
    outcome = payments.handle_notification(engine, channels, "sandbox", headers, body, dt.datetime.now(dt.UTC))
    assert outcome.verdict is payments.Verdict.ACCEPTED, outcome.reason
    return payments.Settlement(outcome.verdict, outcome.reason, outcome.order_no)


def test_a_balance_runs_down_warns_three_times_trips_at_zero_and_a_payment_restores_supply(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    port = free_port()
    fleet = Fleet(FleetOptions(meters=1, dtus=1, headend=("127.0.0.1", port), seed=SEED, load_scale_permille=100_000))
    endpoint = prepare(engine, fleet, now)
    meter = fleet.by_address[endpoint.address]
    settings = HeadendSettings(
        name="headend-e2e",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(
            interval_s=1.0, items=frozenset({ReadItem.ENERGY, ReadItem.RELAY}), frozen_read=False, batch_wait_s=0.1
        ),
        status_every_s=0.5,
        dispatch=DispatchOptions(poll_s=0.1),
        prepaid_every_s=0.05,
    )
    runtime = HeadendRuntime(engine, settings)
    sandbox = Sandbox(b"sandbox-secret-for-the-e2e-test")
    timings: dict[str, float] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        fleet_stop = asyncio.Event()
        fleet_running = asyncio.create_task(fleet.run(fleet_stop))
        await asyncio.wait_for(fleet.ready.wait(), 10)
        assert not meter.relay_open()
        timings["run down"] = await until(meter.relay_open, 60, "the relay to trip")
        await asyncio.sleep(1.5)  # a few more reads of the tripped meter: nothing more is decided
        started = time.perf_counter()
        await asyncio.to_thread(pay, engine, sandbox, 10_000)  # 100 yuan
        await until(lambda: not meter.relay_open(), 10, "the relay to close after the payment")
        timings["payment to relay closed"] = time.perf_counter() - started
        # the meter is closed; let the dispatcher finish verifying it by read-back before the meter goes away
        await until(lambda: queue_settled(engine), 10, "the command queue to settle (verified by read-back)")
        fleet_stop.set()
        await fleet_running
        stop.set()
        await asyncio.wait_for(running, 20)

    asyncio.run(asyncio.wait_for(scenario(), 120))

    with engine.connect() as conn:
        warnings = prepaid.outbox_rows(conn, "warning")
        trips = prepaid.outbox_rows(conn, "trip")
        closes = prepaid.outbox_rows(conn, "close")
        trip_command = queue.get(conn, f"{trips[0]['key']}:{endpoint.meter_id}")
        close_command = queue.get(conn, f"{closes[0]['key']}:{endpoint.meter_id}")
        charged = conn.execute(select(func.coalesce(func.sum(readings.c.amount_micros), 0))).scalar_one()
        wallet = ledger_store.balance(conn, WALLET).balance_micros
        problems = ledger_store.audit(conn)
    print(f"prepaid e2e timings: {timings}")
    assert [w["payload"]["level_micros"] for w in warnings] == [3 * YUAN, 2 * YUAN, 1 * YUAN], "each fired once"
    # one reading may cost more than a level step, so a warning can come with the trip: only "at or below"
    assert all(w["payload"]["balance_micros"] <= w["payload"]["level_micros"] for w in warnings)
    assert len(trips) == 1 and trips[0]["payload"]["balance_micros"] <= 0, "one trip, at zero"
    assert len(closes) == 1 and closes[0]["payload"]["balance_micros"] > 0
    assert all(row["processed_at"] is not None for row in trips + closes)
    assert trip_command is not None and trip_command.state is CommandState.VERIFIED
    assert close_command is not None and close_command.state is CommandState.VERIFIED
    assert close_command.priority > trip_command.priority
    assert wallet == 4 * YUAN + 100 * YUAN - charged, "the wallet is exactly credits minus what readings cost"
    assert problems == []
    assert runtime.stats.relay_problems == 0 and runtime.stats.quarantined == 0
