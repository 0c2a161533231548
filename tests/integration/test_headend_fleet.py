"""THE head-end acceptance test: 1,000 virtual meters behind 50 virtual DTUs, read on schedule over real TCP.

The simulated fleet (``powergate.sim.fleet``) dials into a real ``DtuServer``; the ``ReadScheduler`` reads every
meter through ``Dlt645Link`` every few seconds; at least 99.5 % of the scheduled reads must be collected.
One variant hands the readings to a plain sink and checks them against the meters; the other hands them
through ``Ingestor`` into SQLite and PostgreSQL and writes meter status and endpoints too.

Timing: the plain variant runs 4 intervals of 5 s (about 22 s); the database variant 2 intervals of 5 s per
database (about 11 s each). These are the slowest head-end tests by design (the acceptance item asks for a
fleet read on schedule in real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, func, select

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.ledger import wallet_code
from powergate.domain.rating import RatingContext
from powergate.domain.tariff import Tariff, TariffVersion
from powergate.headend.dlt645_link import Dlt645Link
from powergate.headend.dtu import DtuServer
from powergate.headend.model import MeterEndpoint, MeterSnapshot, ReadItem, Transport
from powergate.headend.scheduler import ReadScheduler, ScheduleConfig, snapshot_readings
from powergate.headend.status import (
    MeterEvent,
    StatusTracker,
    load_endpoints,
    record_events,
    save_endpoints,
    write_status,
)
from powergate.services.ingest import Ingestor, RatingContexts
from powergate.sim.fleet import Fleet, FleetOptions, VirtualDtu
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.metering import MeterRow
from powergate.store.tables import readings
from powergate.store.tables_headend import meter_status

METERS = 1_000
DTUS = 50
FLAT = Tariff(
    id="flat",
    name="1 yuan/kWh",
    commodity=Commodity.ELECTRICITY,
    currency="CNY",
    versions=(TariffVersion(effective_from=dt.datetime(2020, 1, 1), price_micros=1_000_000),),
)


@contextlib.asynccontextmanager
async def fleet_dialled_in() -> AsyncIterator[tuple[Fleet, DtuServer, list[MeterEndpoint]]]:
    server = DtuServer(request_timeout_s=2.0)
    port = await server.start()
    fleet = Fleet(FleetOptions(meters=METERS, dtus=DTUS, headend=("127.0.0.1", port), heartbeat_s=30.0, seed=4))
    stop = asyncio.Event()
    running = asyncio.create_task(fleet.run(stop))
    try:
        assert await server.wait_for_sessions(DTUS, 20.0), server.stats
        endpoints = [
            MeterEndpoint(f"M-{address}", Transport.DLT645, address, dtu.dtu_id)
            for dtu in fleet.faces
            if isinstance(dtu, VirtualDtu)
            for address in dtu.bus.meters
        ]
        assert len(endpoints) == METERS
        yield fleet, server, endpoints
    finally:
        stop.set()
        await running
        await server.close()


async def read_for(scheduler: ReadScheduler, seconds: float) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await running


def test_a_thousand_meters_behind_fifty_dtus_are_read_on_schedule() -> None:
    delivered: list[MeterSnapshot] = []

    async def sink(batch: Sequence[MeterSnapshot]) -> None:
        delivered.extend(batch)

    async def scenario() -> None:
        async with fleet_dialled_in() as (fleet, server, endpoints):
            config = ScheduleConfig(interval_s=5.0, items=frozenset({ReadItem.ENERGY}), frozen_read=False)
            scheduler = ReadScheduler({Transport.DLT645: Dlt645Link(server)}, sink, config)
            for endpoint in endpoints:
                scheduler.add(endpoint)
            started = time.monotonic()
            await read_for(scheduler, 20.0)
            elapsed_s = time.monotonic() - started
            stats = scheduler.stats
            print(f"\n{stats}  ratio {stats.collected_ratio:.4f}  in {elapsed_s:.1f} s  dtu {server.stats}")
            assert stats.scheduled >= 3 * METERS
            assert stats.collected_ratio >= 0.995, stats
            assert stats.delivered == stats.collected == len(delivered)
            reads = Counter(s.meter_id for s in delivered)
            assert len(reads) == METERS and min(reads.values()) >= 3
            by_id = {f"M-{m.address}": m for m in fleet.meters}
            for snapshot in delivered[-100:]:
                meter = by_id[snapshot.meter_id]
                assert snapshot.total_wh is not None and snapshot.total_wh <= meter.total_ticks() * 10
            assert server.stats.busy == 0 and server.stats.timeouts == 0

    asyncio.run(asyncio.wait_for(scenario(), 60))


def setup_meters(engine: Engine, endpoints: list[MeterEndpoint], now: dt.datetime) -> None:
    with engine.begin() as conn:
        metering.add_tariff(conn, FLAT.id, FLAT.name, "electricity", "{}", now)
        for endpoint in endpoints:
            wallet_id = ledger_store.ensure_account(conn, wallet_code(f"A-{endpoint.meter_id}"), now)
            metering.add_meter(conn, endpoint.meter_id, wallet_id, FLAT.id, now)
        save_endpoints(conn, endpoints)


def test_readings_from_the_fleet_are_ingested_and_meter_status_is_stored(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)

    def build(_conn: Connection, meter: MeterRow) -> RatingContext:
        return RatingContext(FLAT, SiteCalendar.china(), ZoneInfo(meter.timezone))

    ingestor = Ingestor(engine, RatingContexts(build))
    reports = []

    read_meters: set[str] = set()

    async def sink(batch: Sequence[MeterSnapshot]) -> None:
        read_meters.update(s.meter_id for s in batch)
        reports.append(await asyncio.to_thread(ingestor.ingest, snapshot_readings(batch)))

    async def scenario() -> None:
        async with fleet_dialled_in() as (_, server, endpoints):
            setup_meters(engine, endpoints, now)
            with engine.connect() as conn:
                assert load_endpoints(conn, Transport.DLT645) == sorted(endpoints, key=lambda e: e.meter_id)
            tracker = StatusTracker(offline_after_s=30)
            items = frozenset({ReadItem.ENERGY, ReadItem.PREPAID})  # 4 requests a meter
            config = ScheduleConfig(interval_s=5.0, items=items, frozen_read=False, batch_size=400)
            scheduler = ReadScheduler({Transport.DLT645: Dlt645Link(server)}, sink, config, on_outcome=tracker.observe)
            for endpoint in endpoints:
                scheduler.add(endpoint)
            await read_for(scheduler, 11.0)
            stats = scheduler.stats
            # rating and SQLite share this process's CPU with the fleet: the ratio is the claim, and that every
            # meter was read; shutdown-cancelled slots are counted apart (stats.cancelled)
            assert stats.collected_ratio >= 0.995 and len(read_meters) == METERS, stats
            assert sum(r.rated + r.skipped + r.duplicates for r in reports) == stats.collected
            assert not any(r.rejected for r in reports)
            with engine.begin() as conn:
                write_status(conn, tracker.changes(), dt.datetime.now(dt.UTC))
            assert tracker.changes() == [], "nothing changed since the write"
            with engine.connect() as conn:
                stored = conn.execute(select(func.count()).select_from(readings)).scalar_one()
                assert stored >= stats.collected - METERS  # readings within one second share an id
                online = conn.execute(select(func.count()).where(meter_status.c.online)).scalar_one()
                assert online == METERS
                row = conn.execute(select(meter_status).limit(1)).one()
                assert row.remaining_micros > 0 and row.purchase_count == 0
                assert ledger_store.audit(conn) == []

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_meter_event_read_twice_is_stored_once(engine: Engine) -> None:
    now = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
    endpoint = MeterEndpoint("M-1", Transport.DLT645, "000000000001", "860000000000001")
    setup_meters(engine, [endpoint], now)
    opened = MeterEvent("M-1", "cover_open", now - dt.timedelta(hours=1), "cover opened")
    with engine.begin() as conn:
        assert record_events(conn, [opened], now) == (1, [])
    with engine.begin() as conn:
        inserted, rejected = record_events(conn, [opened, MeterEvent("M-1", "kettle", now)], now)
    assert inserted == 0
    assert len(rejected) == 1 and rejected[0].reason.startswith("kind: 'kettle'")
