"""TOU push: ``prepaid.push_tou`` builds a meter's TOU tables from its tariff and its site calendar, queues one
audited SET_TOU command, and the head-end writes it over real TCP (DTU + DL/T 645) into a virtual meter, whose
metering then switches band by the pushed tables (site holidays included). A tariff the meter model cannot hold
is refused naming the limit, with nothing queued. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from zoneinfo import ZoneInfo

from prepaid_b_world import add_tenant, make_site
from sqlalchemy import Engine

from powergate.domain.calendar import DayType
from powergate.domain.tariff_files import load_tariff
from powergate.domain.tou_table import MeterTou, MeterTouLimits, build_meter_tou
from powergate.headend import commands as queue
from powergate.headend.commands import CommandState, DispatchOptions, Problem
from powergate.headend.model import CommandKind, MeterEndpoint, ReadItem, Transport
from powergate.headend.scheduler import ScheduleConfig
from powergate.headend.status import save_endpoints
from powergate.services import prepaid, site_calendar
from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
from powergate.sim.fleet import Fleet, FleetOptions
from powergate.sim.meter import Band
from powergate.store.audit import audit_records
from testkit import free_port

SEED = 23
TZ = ZoneInfo("Asia/Shanghai")
WHO = prepaid.Operator("admin:ops1", "summer TOU schedule")
TOU = """id = "tou"

[[versions]]
effective_from = "2020-01-01"
[versions.tou.prices]
sharp = "1.3000"
peak = "1.0000"
flat = "0.6000"
valley = "0.3000"
[[versions.tou.seasons]]
name = "all year"
months = "1-12"
schedule = [
  { start = "00:00", band = "valley" },
  { start = "08:00", band = "flat" },
  { start = "10:00", band = "peak" },
  { start = "19:00", band = "sharp" },
  { start = "21:00", band = "peak" },
  { start = "23:00", band = "valley" },
]
weekend_schedule = [{ start = "00:00", band = "valley" }, { start = "08:00", band = "flat" }]
holiday_schedule = [{ start = "00:00", band = "valley" }]
"""
FIFTEEN = (
    'id = "fine"\n\n[[versions]]\neffective_from = "2020-01-01"\n[versions.tou.prices]\npeak = "1.0000"\n'
    'valley = "0.3000"\n[[versions.tou.seasons]]\nname = "all"\nmonths = "1-12"\nschedule = ['
    + ", ".join(f'{{ start = "{h:02d}:00", band = "{"peak" if h % 2 else "valley"}" }}' for h in range(15))
    + "]\n"
)


def local_minute(day: dt.date, hour: int) -> int:
    """Minutes since 1970-01-01 00:00 site-local: how the virtual meter counts its local time."""
    return (day - dt.date(1970, 1, 1)).days * 1440 + hour * 60


def test_a_pushed_tou_table_reaches_the_meter_and_its_bands_follow_the_site_calendar(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    today = now.astimezone(TZ).date()
    workday = next(today + dt.timedelta(days=d) for d in range(3, 30) if (today + dt.timedelta(days=d)).weekday() < 2)
    port = free_port()
    fleet = Fleet(FleetOptions(meters=1, dtus=1, headend=("127.0.0.1", port), seed=SEED))
    meter = fleet.meters[0]
    site_id = make_site(engine, now)
    tenant = add_tenant(engine, site_id, "T-1", now, tariff="tou", document=TOU)
    with engine.begin() as conn:
        assert (
            site_calendar.set_day(
                conn, site_id, workday, DayType.HOLIDAY, actor="admin:ops1", reason="site day", now=now
            )
            is None
        )
        save_endpoints(conn, [MeterEndpoint(tenant.meter_id, Transport.DLT645, meter.address, f"86{SEED:03d}{0:010d}")])
        calendar = site_calendar.calendar_of_site(conn, site_id)
    version = load_tariff(TOU).versions[0]
    assert version.tou is not None
    expected = build_meter_tou(version.tou, calendar.day_type, today, prepaid.TOU_HORIZON_DAYS)
    assert isinstance(expected, MeterTou)

    pushed = prepaid.push_tou(engine, tenant.wallet, WHO, now)
    assert isinstance(pushed, list) and len(pushed) == 1
    command_id = pushed[0].queued.command_id
    assert pushed[0].queued.command.kind is CommandKind.SET_TOU and pushed[0].queued.command.tou == expected

    settings = HeadendSettings(
        name="headend-tou",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(interval_s=3600.0, items=frozenset({ReadItem.RELAY}), frozen_read=False),
        dispatch=DispatchOptions(poll_s=0.05),
    )
    runtime = HeadendRuntime(engine, settings)

    def delivered() -> bool:
        found = prepaid.command_state(engine, command_id)
        return found is not None and found.state in (CommandState.ACKED, CommandState.VERIFIED)

    async def scenario() -> None:
        stop, fleet_stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        fleet_running = asyncio.create_task(fleet.run(fleet_stop))
        await asyncio.wait_for(fleet.ready.wait(), 10)
        started = time.perf_counter()
        while not await asyncio.to_thread(delivered):
            assert time.perf_counter() - started < 30, "timed out waiting for the TOU push to be acknowledged"
            await asyncio.sleep(0.05)
        fleet_stop.set()
        await fleet_running
        stop.set()
        await asyncio.wait_for(running, 20)

    asyncio.run(asyncio.wait_for(scenario(), 90))

    assert meter.settings.tou_year == expected, "the meter holds exactly the tables the platform built"
    assert meter.band_at_local_minute(local_minute(workday, 12)) is Band.VALLEY, "the site's holiday"
    assert meter.band_at_local_minute(local_minute(workday - dt.timedelta(days=1), 12)) is Band.PEAK
    assert meter.band_at_local_minute(local_minute(workday - dt.timedelta(days=1), 20)) is Band.SHARP
    with engine.connect() as conn:
        [record] = audit_records(conn, subject=f"meter:{tenant.meter_id}", action="set_tou")
    assert record.actor == WHO.actor and record.detail["command"] == command_id


def test_a_tariff_the_meter_cannot_hold_is_refused_naming_the_limit_and_queues_nothing(engine: Engine) -> None:
    now = dt.datetime(2026, 11, 25, 4, 0, tzinfo=dt.UTC)
    site_id = make_site(engine, now)
    fine = add_tenant(engine, site_id, "T-1", now, tariff="fine", document=FIFTEEN)
    flat = add_tenant(engine, site_id, "T-2", now)
    refused = prepaid.push_tou(engine, fine.meter_id, WHO, now)
    assert isinstance(refused, Problem) and "15 periods; the meter holds 14" in refused.message, refused
    small = prepaid.push_tou(engine, tenant_of_wallet := flat.wallet, WHO, now, limits=MeterTouLimits(periods=1))
    assert isinstance(small, Problem) and small.field == "tariff" and tenant_of_wallet in flat.wallet
    for target, field in (("nobody", "wallet_or_meter"),):
        problem = prepaid.push_tou(engine, target, WHO, now)
        assert isinstance(problem, Problem) and problem.field == field
    unnamed = prepaid.push_tou(engine, fine.meter_id, prepaid.Operator("ops", " "), now)
    assert isinstance(unnamed, Problem) and unnamed.field == "reason"
    with engine.connect() as conn:
        assert queue.commands_of(conn, fine.meter_id) == [] and queue.commands_of(conn, flat.meter_id) == []
        assert audit_records(conn, action="set_tou") == []
