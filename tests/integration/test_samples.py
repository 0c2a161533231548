"""Instantaneous samples: stored once per (meter, instant), checked, read as curves, pruned; and the head-end
process storing what simulated DL/T 645 meters answer over real TCP. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest
from sqlalchemy import Engine, func, select

from powergate.domain.ledger import wallet_code
from powergate.headend.commands import DispatchOptions
from powergate.headend.model import MeterEndpoint, MeterSnapshot, ReadItem, Transport
from powergate.headend.scheduler import ScheduleConfig
from powergate.headend.status import save_endpoints
from powergate.services import samples
from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
from powergate.services.samples import Sample
from powergate.sim.fleet import Fleet, FleetOptions
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables_samples import meter_samples
from testkit import FLAT_TARIFF

NOW = dt.datetime(2026, 12, 1, 4, 0, tzinfo=dt.UTC)


def free_port() -> int:
    # not ``conftest.free_port``: with tests/web collected too, ``conftest`` names tests/web/conftest.py
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def add_meters(engine: Engine, meter_ids: list[str], now: dt.datetime) -> None:
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", FLAT_TARIFF, now)
        for meter_id in meter_ids:
            wallet_id = ledger_store.ensure_account(conn, wallet_code(f"A-{meter_id}"), now)
            metering.add_meter(conn, meter_id, wallet_id, "flat", now, max_power_w=2_000_000)


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(meter_samples)).scalar_one())


def test_a_batch_is_stored_once_and_bad_values_are_rejected_one_by_one(engine: Engine) -> None:
    add_meters(engine, ["M1", "M2"], NOW)
    batch = [
        Sample("M1", NOW, voltage_dv=2_203, current_ma=5_120, power_dw=11_050, pf_milli=981, frequency_chz=5_001),
        Sample("M2", NOW, voltage_dv=2_190),
        Sample("M2", NOW + dt.timedelta(minutes=15), voltage_dv=70_000_000),  # 7,000,000 V: a garbled register
        Sample("M2", NOW + dt.timedelta(minutes=30), pf_milli=1_200),
        Sample("M2", NOW + dt.timedelta(minutes=45)),
    ]
    with engine.begin() as conn:
        stored, rejected = samples.store(conn, batch)
    assert stored == 2
    assert [(r.meter_id, r.reason) for r in rejected] == [
        ("M2", "voltage_dv: 70000000 is outside 0..1000000"),
        ("M2", "pf_milli: 1200 is outside -1000..1000"),
        ("M2", "no instantaneous value"),
    ]
    with engine.begin() as conn:  # a re-delivered push: skipped, not an error, nothing doubled
        samples.store(conn, batch[:2])
    assert count(engine) == 2
    with engine.connect() as conn:
        curve = samples.curve(conn, "M1", NOW - dt.timedelta(hours=1), NOW + dt.timedelta(hours=1))
    assert curve == [batch[0]]


def test_snapshots_without_instant_values_store_nothing_and_curves_are_bounded_and_ordered(engine: Engine) -> None:
    add_meters(engine, ["M1"], NOW)
    energy_only = [MeterSnapshot("M1", NOW, total_wh=1_000)]
    assert samples.store_snapshots(engine, energy_only) == (0, [])
    instant = [
        MeterSnapshot("M1", NOW + dt.timedelta(minutes=m), voltage_dv=2_200 + m, current_ma=1_000, power_dw=-500)
        for m in range(10)
    ]
    assert samples.store_snapshots(engine, instant)[0] == 10
    with engine.connect() as conn:
        last3 = samples.curve(conn, "M1", NOW, NOW + dt.timedelta(hours=1), limit=3)
    assert [s.voltage_dv for s in last3] == [2_207, 2_208, 2_209], "the most recent points, oldest first"
    assert all(s.power_dw == -500 for s in last3), "reverse power is kept with its sign"


def test_prune_deletes_only_samples_older_than_the_retention(engine: Engine) -> None:
    add_meters(engine, ["M1"], NOW)
    old = [Sample("M1", NOW - dt.timedelta(days=40, minutes=m), voltage_dv=2_200) for m in range(30)]
    recent = [Sample("M1", NOW - dt.timedelta(days=3, minutes=m), voltage_dv=2_200) for m in range(5)]
    with engine.begin() as conn:
        samples.store(conn, old + recent)
    assert samples.prune(engine, NOW) == 30
    assert count(engine) == 5
    assert samples.prune(engine, NOW) == 0


def test_the_database_refuses_what_the_service_refuses(engine: Engine) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    add_meters(engine, ["M1"], NOW)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(meter_samples).values(meter_id="M1", at=NOW))  # no value at all
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(meter_samples).values(meter_id="M1", at=NOW, current_ma=-1))


def test_the_head_end_process_stores_the_instant_values_it_reads_over_dlt645(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    port = free_port()
    fleet = Fleet(FleetOptions(meters=4, dtus=1, headend=("127.0.0.1", port), seed=11))
    endpoints = [
        MeterEndpoint(f"M-{m.address}", Transport.DLT645, m.address, f"86{11:03d}{0:010d}") for m in fleet.meters
    ]
    add_meters(engine, [e.meter_id for e in endpoints], now)
    with engine.begin() as conn:
        save_endpoints(conn, endpoints)
    items = frozenset({ReadItem.ENERGY, ReadItem.INSTANT})
    settings = HeadendSettings(
        name="headend-samples",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(interval_s=1.0, items=items, frozen_read=False, batch_wait_s=0.2),
        status_every_s=0.5,
        dispatch=DispatchOptions(poll_s=0.2),
    )
    runtime = HeadendRuntime(engine, settings)

    async def scenario() -> None:
        stop, fleet_stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        fleet_running = asyncio.create_task(fleet.run(fleet_stop))
        await asyncio.wait_for(fleet.ready.wait(), 10)
        for _ in range(100):
            if runtime.stats.samples >= 8:
                break
            await asyncio.sleep(0.1)
        fleet_stop.set()
        await fleet_running
        stop.set()
        await asyncio.wait_for(running, 20)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    with engine.connect() as conn:
        rows = conn.execute(select(meter_samples)).all()
    assert {r.meter_id for r in rows} == {e.meter_id for e in endpoints}, "every meter's instant values are stored"
    assert all(1_800 <= r.voltage_dv <= 2_600 and r.frequency_chz is not None for r in rows), rows[:3]
    assert runtime.stats.batches >= 1 and runtime.stats.rejected == 0, "the readings of the same reads were ingested"
    assert runtime.stats.samples >= len(rows) >= 4
