"""Gap detection and backfill over real TCP: a meter unplugged across midnight is backfilled from its own freeze.

Virtual DTUs (``powergate.sim.fleet.VirtualDtu``) dial into a real ``DtuServer``; ``ReadScheduler`` reads the
meters through ``Dlt645Link``. One clock, a fake one, is shared by the virtual meters, the link and the
scheduler, and the test drives the scheduler by hand (``tick`` at each fake interval, then ``settle``), so a
night passes in well under a second while every read is real DL/T 645 over TCP, answered by meters that
freeze their registers at their own local midnight (``VirtualMeter.frozen_day``).

What is proven: the unplugged meters' reads fail as OFFLINE; when their DTU dials in again, the first read is a
gap (``on_gap``) and brings the daily freeze made while they were away, with the meter's registers at 00:00
(its own clock), as a reading whose id is the same however often that freeze is read; away over two midnights,
the older freeze is backfilled too. Meters that stayed online see no gap and read each freeze just after
midnight; one whose clock is 15 minutes slow has not frozen then, and is asked again until it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import pytest

from powergate.domain.rating import Reading
from powergate.headend.dlt645_link import Dlt645Link
from powergate.headend.dtu import DtuServer
from powergate.headend.model import MeterEndpoint, MeterSnapshot, ReadItem, Transport
from powergate.headend.scheduler import ReadScheduler, ScheduleConfig, snapshot_readings
from powergate.sim.faults import Faults, SimStats
from powergate.sim.fleet import VirtualDtu, build_meters
from powergate.sim.meter import VirtualMeter

SHANGHAI = ZoneInfo("Asia/Shanghai")
INTERVAL_S = 600
START = dt.datetime(2026, 11, 22, 23, 0, tzinfo=SHANGHAI)
MIDNIGHT = dt.datetime(2026, 11, 23, tzinfo=SHANGHAI)
UNPLUGGED = "860000000000001"
STAYS = "860000000000002"


class FakeClock:
    """The one time of the scenario: whole seconds for the meters, an aware datetime for the head-end."""

    def __init__(self, start: dt.datetime) -> None:
        self.now_s = int(start.timestamp())

    def __call__(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now_s, dt.UTC)

    def seconds(self) -> int:
        return self.now_s

    def advance(self, seconds: int) -> dt.datetime:
        self.now_s += seconds
        return self()


@dataclass
class Sink:
    snapshots: list[MeterSnapshot] = field(default_factory=list)

    async def __call__(self, batch: Sequence[MeterSnapshot]) -> None:
        self.snapshots.extend(batch)


class PluggableDtu:
    """A virtual DTU whose cable the test pulls out and plugs back in (its meters keep running)."""

    def __init__(self, dtu_id: str, meters: list[VirtualMeter], port: int, clock: FakeClock) -> None:
        self.dtu = VirtualDtu(
            dtu_id, meters, headend=("127.0.0.1", port), clock=clock.seconds, faults=Faults(), stats=SimStats()
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def plug_in(self, server: DtuServer) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.dtu.run(self.stop))
        await until(lambda: server.online(self.dtu.dtu_id))

    async def unplug(self, server: DtuServer) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await until(lambda: not server.online(self.dtu.dtu_id))


async def until(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def two_dtus(clock: FakeClock) -> AsyncIterator[tuple[DtuServer, list[PluggableDtu], list[MeterEndpoint]]]:
    """Two DTUs of three meters each; on the unplugged one a meter's clock is 3 minutes fast, on the other one's
    15 minutes slow (it freezes after the head-end's first frozen read of the day)."""
    server = DtuServer(request_timeout_s=2.0)
    port = await server.start()
    meters = build_meters(6, seed=9, now_s=clock.seconds())
    meters[2].clock_offset_s = 180
    meters[5].clock_offset_s = -900
    dtus = [PluggableDtu(UNPLUGGED, meters[:3], port, clock), PluggableDtu(STAYS, meters[3:], port, clock)]
    try:
        for dtu in dtus:
            await dtu.plug_in(server)
        endpoints = [
            MeterEndpoint(f"M-{address}", Transport.DLT645, address, dtu.dtu.dtu_id)
            for dtu in dtus
            for address in dtu.dtu.bus.meters
        ]
        yield server, dtus, endpoints
    finally:
        for dtu in dtus:
            dtu.stop.set()
            if dtu.task is not None:
                await dtu.task
        await server.close()


@pytest.mark.parametrize("nights", [1, 2])
def test_a_meter_unplugged_across_midnight_is_backfilled_from_its_own_freezes_after_it_dials_in_again(
    nights: int,
) -> None:
    clock = FakeClock(START)
    sink = Sink()
    gaps: list[tuple[str, dt.datetime, dt.datetime]] = []
    midnights = [MIDNIGHT + dt.timedelta(days=night) for night in range(nights)]
    back_at = midnights[-1] + dt.timedelta(minutes=20)

    async def scenario() -> None:
        async with two_dtus(clock) as (server, (unplugged, stays), endpoints):
            link = Dlt645Link(server, tz=SHANGHAI, clock=clock)
            config = ScheduleConfig(interval_s=INTERVAL_S, tz=SHANGHAI)
            scheduler = ReadScheduler(
                {Transport.DLT645: link}, sink, config, clock=clock, on_gap=lambda *gap: gaps.append(gap)
            )
            for endpoint in endpoints:
                scheduler.add(endpoint)  # last frozen read unknown: the first read asks (no freeze yet)

            async def interval() -> None:
                scheduler.tick(clock.advance(INTERVAL_S))
                await scheduler.settle()

            await interval()  # 23:10: everyone read
            assert scheduler.stats.collected == 6 and scheduler.stats.frozen_reads == 6
            await unplugged.unplug(server)
            away = 0
            while clock() + dt.timedelta(seconds=INTERVAL_S) < back_at:  # unreachable over midnight
                await interval()
                away += 1
            assert scheduler.stats.failed == 3 * away and not gaps
            await unplugged.plug_in(server)
            await interval()  # 00:20: back
            assert clock() == back_at
            await scheduler.flush()

            meters = {m.address: m for d in (unplugged, stays) for m in d.dtu.bus.meters.values()}
            back = {e.meter_id for e in endpoints if e.link_id == UNPLUGGED}
            assert {meter_id for meter_id, _, _ in gaps} == back, "a gap for exactly the unplugged meters"
            assert scheduler.stats.gaps == 3 and all(last < MIDNIGHT and again == back_at for _, last, again in gaps)
            assert scheduler.stats.backfilled == 3 * (nights - 1)
            frozen = frozen_readings(sink.snapshots)
            for endpoint in endpoints:
                check_freezes(endpoint.meter_id, frozen[endpoint.meter_id], meters[endpoint.address], midnights)
            for snapshot in sink.snapshots:
                if snapshot.meter_id in back and snapshot.frozen_at is not None and snapshot.at > MIDNIGHT:
                    assert snapshot.at == back_at, "backfilled on the first read after the DTU dialled in again"

            # reading the freeze again (a retry, a restart) gives the same reading id: ingest stores it once
            again = await scheduler.read_now(endpoints[0], frozenset({ReadItem.FROZEN_DAY}))
            assert isinstance(again, MeterSnapshot)
            meter_id = endpoints[0].meter_id
            newest = frozen_id(meter_id, midnights[-1])
            assert frozen_readings([again])[meter_id] == {newest: frozen[meter_id][newest]}

    asyncio.run(asyncio.wait_for(scenario(), 30))


def frozen_id(meter_id: str, midnight: dt.datetime) -> str:
    return f"{meter_id}@frozen@{int(midnight.timestamp())}"


def frozen_readings(snapshots: Sequence[MeterSnapshot]) -> dict[str, dict[str, Reading]]:
    """Frozen readings by meter and id; the same id read twice must carry the same values."""
    by_meter: dict[str, dict[str, Reading]] = defaultdict(dict)
    for reading in snapshot_readings(snapshots):
        if "@frozen@" in reading.reading_id:
            seen = by_meter[reading.meter_id].setdefault(reading.reading_id, reading)
            assert seen == reading, (seen, reading)
    return by_meter


def check_freezes(
    meter_id: str, readings: dict[str, Reading], meter: VirtualMeter, midnights: list[dt.datetime]
) -> None:
    """One reading per midnight, with the registers the meter froze at its own 00:00 (fast, slow or right)."""
    assert sorted(readings) == sorted(frozen_id(meter_id, midnight) for midnight in midnights), meter.address
    assert meter.frozen_days() == len(midnights)
    for last, midnight in enumerate(reversed(midnights), start=1):
        freeze = meter.frozen_day(last)
        assert freeze is not None and freeze.meter_time_s == int(midnight.timestamp())
        reading = readings[frozen_id(meter_id, midnight)]
        assert reading.at == midnight
        assert reading.total_wh == freeze.total_ticks * 10
        assert reading.bands_wh == tuple(ticks * 10 for ticks in freeze.band_ticks)
