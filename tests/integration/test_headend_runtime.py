"""The head-end process end to end: simulated DTUs dial in over real TCP; readings are rated into the ledger;
meter status is stored; a queued trip reaches the meter. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from sqlalchemy import Engine, func, select

from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.headend.commands import CommandState, DispatchOptions
from powergate.headend.model import CommandKind, MeterCommand, MeterEndpoint, ReadItem, Transport
from powergate.headend.scheduler import ScheduleConfig
from powergate.headend.status import save_endpoints
from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
from powergate.sim.fleet import Fleet, FleetOptions, split
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import readings
from powergate.store.tables_headend import meter_status
from testkit import FLAT_TARIFF, free_port

METERS, DTUS, SEED = 20, 2, 7


def prepare(engine: Engine, fleet: Fleet, now: dt.datetime) -> list[MeterEndpoint]:
    endpoints = [
        MeterEndpoint(f"M-{meter.address}", Transport.DLT645, meter.address, f"86{SEED % 1000:03d}{index:010d}")
        for index, group in enumerate(split(fleet.meters, DTUS))
        for meter in group
    ]
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", FLAT_TARIFF, now)
        for endpoint in endpoints:
            wallet = wallet_code(f"A-{endpoint.meter_id}")
            wallet_id = ledger_store.ensure_account(conn, wallet, now)
            # at 50x load a virtual meter draws up to ~400 kW: give it the limit of a large industrial meter
            metering.add_meter(conn, endpoint.meter_id, wallet_id, "flat", now, max_power_w=2_000_000)
            ledger_store.post(conn, recharge_entry(f"cash:{endpoint.meter_id}", wallet, "cash", 100_000_000, now), now)
        save_endpoints(conn, endpoints)
    return endpoints


def test_the_head_end_process_reads_rates_stores_status_and_delivers_a_trip(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    port = free_port()
    # 50x load: energy accrues within seconds, average power stays far below the implausibility limit
    fleet = Fleet(
        FleetOptions(meters=METERS, dtus=DTUS, headend=("127.0.0.1", port), seed=SEED, load_scale_permille=50_000)
    )
    endpoints = prepare(engine, fleet, now)
    settings = HeadendSettings(
        name="headend-test",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(
            interval_s=2.0, items=frozenset({ReadItem.ENERGY, ReadItem.RELAY}), frozen_read=False, batch_wait_s=0.2
        ),
        status_every_s=0.5,
        dispatch=DispatchOptions(poll_s=0.1),
    )
    runtime = HeadendRuntime(engine, settings)
    target = endpoints[3]

    seen_online: list[int] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        fleet_stop = asyncio.Event()
        fleet_running = asyncio.create_task(fleet.run(fleet_stop))
        await asyncio.wait_for(fleet.ready.wait(), 10)
        with engine.begin() as conn:
            trip = MeterCommand("trip-1", CommandKind.TRIP, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
            queue.enqueue(conn, target.meter_id, trip, requested_by="operator:ops1", reason="test trip", now=now)
        assert runtime.dispatcher is not None
        runtime.dispatcher.wake()
        await asyncio.sleep(7.0)
        # Status while the fleet is connected: once the fleet stops, its DTUs hang up and the meters go offline
        # (rightly), so the count is taken before that, waiting (bounded) for the next status flush.
        for _ in range(50):
            with engine.connect() as conn:
                query = select(func.count()).select_from(meter_status).where(meter_status.c.online)
                seen_online.append(conn.execute(query).scalar_one())
            if seen_online[-1] == METERS:
                break
            await asyncio.sleep(0.1)
        fleet_stop.set()
        await fleet_running
        stop.set()
        await asyncio.wait_for(running, 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))

    with engine.connect() as conn:
        per_meter = dict(conn.execute(select(readings.c.meter_id, func.count()).group_by(readings.c.meter_id)).all())
        rated = conn.execute(
            select(func.count()).select_from(readings).where(readings.c.status == "rated")
        ).scalar_one()
        charged = conn.execute(select(func.coalesce(func.sum(readings.c.amount_micros), 0))).scalar_one()
        command = queue.get(conn, "trip-1")
        problems = ledger_store.audit(conn)
        reasons = conn.execute(select(readings.c.reason).where(readings.c.status == "quarantined")).scalars().all()
        revenue = ledger_store.balance(conn, "revenue:energy").balance_micros
    assert set(per_meter) == {e.meter_id for e in endpoints}, "every meter was read and stored"
    assert min(per_meter.values()) >= 2
    assert rated >= METERS and charged > 0
    assert revenue == charged, "what readings were charged is exactly what the ledger deducted"
    assert seen_online[-1] == METERS, f"meters online while the fleet ran: {seen_online}"
    assert command is not None and command.state is CommandState.VERIFIED
    assert fleet.by_address[target.address].relay_open()
    assert problems == []
    assert runtime.stats.rejected == 0 and runtime.stats.quarantined == 0, reasons


def test_the_headend_command_registers_endpoints_and_runs_for_a_while(tmp_path: object, capsys: object) -> None:
    from pathlib import Path

    import pytest

    from powergate.cli import main
    from powergate.store.db import make_engine, upgrade

    assert isinstance(tmp_path, Path) and isinstance(capsys, pytest.CaptureFixture)
    url = f"sqlite:///{tmp_path / 'pg.db'}"
    upgrade(url)
    engine = make_engine(url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", FLAT_TARIFF, now)
        metering.add_meter(conn, "M-1", ledger_store.ensure_account(conn, wallet_code("A-1"), now), "flat", now)
    engine.dispose()
    args = ["headend", "--url", url, "endpoint", "add", "--meter", "M-1", "--transport", "dlt645"]
    assert main([*args, "--address", "000000000001", "--link", "DTU-1"]) == 0
    assert main(["headend", "--url", url, "endpoint", "list"]) == 0
    assert "M-1\tdlt645\t000000000001\tDTU-1" in capsys.readouterr().out
    assert main([*args[:5], "--meter", "nope", "--transport", "dlt645", "--address", "1", "--link", "x"]) == 2
    assert "no meter 'nope'" in capsys.readouterr().err
    assert main(["headend", "--url", url, "run", "--listen", f"127.0.0.1:{free_port()}", "--duration", "1"]) == 0
    out = capsys.readouterr().out
    assert "head-end headend-1: 1 meters" in out and "stopped at" in out
    assert main(["headend", "--url", url, "run", "--listen", "nonsense"]) == 2


def test_meter_side_meters_have_their_reported_balance_mirrored(engine: Engine) -> None:
    from powergate.services import meterside
    from powergate.store.tables_meterside import meter_side_state

    now = dt.datetime.now(dt.UTC)
    port = free_port()
    fleet = Fleet(FleetOptions(meters=2, dtus=1, headend=("127.0.0.1", port), seed=SEED))
    endpoints = prepare(engine, fleet, now)[:2]
    target = endpoints[0]
    with engine.begin() as conn:
        meterside.enrol(conn, target.meter_id, fleet.by_address[target.address].purchase_count, now)
    settings = HeadendSettings(
        name="headend-mirror",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(
            interval_s=1.0, items=frozenset({ReadItem.ENERGY, ReadItem.PREPAID}), frozen_read=False, batch_wait_s=0.1
        ),
    )
    runtime = HeadendRuntime(engine, settings)

    async def scenario() -> None:
        stop, fleet_stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        fleet_running = asyncio.create_task(fleet.run(fleet_stop))
        await asyncio.sleep(3.0)
        fleet_stop.set()
        await fleet_running
        stop.set()
        await asyncio.wait_for(running, 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    with engine.connect() as conn:
        row = conn.execute(select(meter_side_state).where(meter_side_state.c.meter_id == target.meter_id)).one()
    meter = fleet.by_address[target.address]
    assert row.mirrored_at is not None
    assert row.mirrored_purchase_count == meter.purchase_count
    assert row.mirrored_remaining_micros is not None and row.mirrored_remaining_micros >= meter.remaining_micros()


def test_a_meter_whose_clock_is_off_is_synced_once_by_the_head_end_process(engine: Engine) -> None:
    from zoneinfo import ZoneInfo

    from powergate.headend.commands import CommandState

    # a fixed time well away from midnight, when the policy allows syncs
    now = dt.datetime.now(ZoneInfo("Asia/Shanghai")).replace(hour=12, minute=0).astimezone(dt.UTC)
    port = free_port()

    started = time.monotonic()

    def clock() -> dt.datetime:  # the head-end and the meters share one clock, set to noon and running
        return now + dt.timedelta(seconds=time.monotonic() - started)

    fleet = Fleet(
        FleetOptions(meters=2, dtus=1, headend=("127.0.0.1", port), seed=SEED), clock=lambda: int(clock().timestamp())
    )
    endpoints = prepare(engine, fleet, now)[:2]
    slow = fleet.by_address[endpoints[0].address]
    slow.clock_offset_s = -600  # ten minutes slow
    settings = HeadendSettings(
        name="headend-clock",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(
            interval_s=1.0, items=frozenset({ReadItem.ENERGY, ReadItem.CLOCK}), frozen_read=False, batch_wait_s=0.1
        ),
        dispatch=DispatchOptions(poll_s=0.1),
    )
    runtime = HeadendRuntime(engine, settings, clock=clock)

    async def scenario() -> None:
        stop, fleet_stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        fleet_running = asyncio.create_task(fleet.run(fleet_stop))
        await asyncio.sleep(4.0)
        fleet_stop.set()
        await fleet_running
        stop.set()
        await asyncio.wait_for(running, 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    day = now.astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()
    with engine.connect() as conn:
        synced = queue.get(conn, f"timesync:{endpoints[0].meter_id}:{day}")
        untouched = queue.get(conn, f"timesync:{endpoints[1].meter_id}:{day}")
    assert runtime.stats.time_syncs == 1, "one sync, however many reads saw the slow clock"
    assert synced is not None and synced.state is CommandState.VERIFIED
    assert untouched is None, "a meter on time is left alone"
    assert abs(slow.clock_offset_s) < 60, "the broadcast set the slow meter's clock"
