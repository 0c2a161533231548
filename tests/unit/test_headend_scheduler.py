"""Read scheduling over the in-memory link: spread, priority, retries, gaps, the daily freeze, batching.

Most tests drive the scheduler by hand (``tick`` at a fake time, then ``settle``) so hours pass in
milliseconds; one runs the real loop for a few seconds on a 1 s interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.headend.memory import LinkFaults, MemoryLink
from powergate.headend.model import (
    CommandKind,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterSnapshot,
    ReadItem,
    Transport,
)
from powergate.headend.scheduler import (
    ReadScheduler,
    ScheduleConfig,
    first_due_s,
    frozen_read_due,
    slot_offset_s,
    snapshot_readings,
)
from powergate.sim.fleet import build_meters
from powergate.sim.meter import VirtualMeter

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = dt.datetime(2026, 11, 22, 23, 0, tzinfo=SHANGHAI).astimezone(dt.UTC)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


class FakeClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, seconds: float) -> dt.datetime:
        self.at += dt.timedelta(seconds=seconds)
        return self.at


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[MeterSnapshot]] = []

    async def __call__(self, batch: Sequence[MeterSnapshot]) -> None:
        self.batches.append(list(batch))

    @property
    def snapshots(self) -> list[MeterSnapshot]:
        return [s for batch in self.batches for s in batch]


def fleet(count: int, clock: FakeClock, dtus: int = 4) -> tuple[dict[str, VirtualMeter], list[MeterEndpoint]]:
    meters = build_meters(count, seed=7, now_s=int(clock().timestamp()))
    by_id = {f"M-{i}": meter for i, meter in enumerate(meters)}
    endpoints = [
        MeterEndpoint(f"M-{i}", Transport.DLT645, meter.address, f"DTU-{i % dtus}") for i, meter in enumerate(meters)
    ]
    return by_id, endpoints


# -- pure planning ----------------------------------------------------------------------------------------


def test_a_meters_slot_is_the_same_in_every_process_and_inside_the_interval() -> None:
    assert slot_offset_s("M-1", 900) == slot_offset_s("M-1", 900)
    assert 0 <= slot_offset_s("M-1", 900) < 900
    assert slot_offset_s("M-1", 900) != slot_offset_s("M-2", 900)


def test_ten_thousand_meters_are_spread_evenly_over_the_interval() -> None:
    buckets = Counter(int(slot_offset_s(f"meter-{i}", 60.0)) for i in range(10_000))
    assert len(buckets) == 60
    # 166.7 per second on average; a uniform hash stays well within +-40 % in every second
    assert min(buckets.values()) > 100 and max(buckets.values()) < 235


@given(st.text(min_size=1, max_size=20), st.floats(1.0, 86_400.0), st.floats(0.0, 2e9))
def test_the_first_slot_is_within_one_interval_and_on_the_meters_offset(
    meter_id: str, interval_s: float, now_s: float
) -> None:
    due = first_due_s(meter_id, interval_s, now_s)
    assert now_s - 1e-6 <= due < now_s + interval_s + 1e-6
    phase = (due - slot_offset_s(meter_id, interval_s)) / interval_s
    assert abs(phase - round(phase)) < 1e-6


@pytest.mark.parametrize(
    ("last_frozen", "local_now", "due"),
    [
        (None, "2026-11-22 12:00", True),
        ("2026-11-22", "2026-11-22 23:59", False),
        ("2026-11-22", "2026-11-23 00:03", False),  # within frozen_after: the meter may not have frozen yet
        ("2026-11-22", "2026-11-23 00:06", True),
        ("2026-11-20", "2026-11-22 08:00", True),  # offline for days: read as soon as it is back
    ],
)
def test_the_daily_frozen_read_is_due_once_per_local_day_after_midnight(
    last_frozen: str | None, local_now: str, due: bool
) -> None:
    now = dt.datetime.fromisoformat(local_now).replace(tzinfo=SHANGHAI)
    last = dt.date.fromisoformat(last_frozen) if last_frozen else None
    assert frozen_read_due(last, now, SHANGHAI, dt.timedelta(minutes=5)) is due


def test_snapshots_become_readings_with_ids_that_repeat_for_the_same_freeze() -> None:
    at = dt.datetime(2026, 11, 23, 0, 20, tzinfo=dt.UTC)
    frozen_at = dt.datetime(2026, 11, 22, 16, 0, tzinfo=dt.UTC)
    snapshot = MeterSnapshot(
        "M-1", at, total_wh=1230, bands_wh=(0, 0, 1230, 0), frozen_at=frozen_at, frozen_total_wh=1200
    )
    first, second = snapshot_readings([snapshot]), snapshot_readings([snapshot])
    assert [r.reading_id for r in first] == [f"M-1@frozen@{int(frozen_at.timestamp())}", f"M-1@{int(at.timestamp())}"]
    assert first == second
    assert snapshot_readings([MeterSnapshot("M-1", at, relay_open=True)]) == []


# -- the scheduler over the in-memory link ---------------------------------------------------------------


def test_every_meter_is_read_once_per_interval_and_delivered_in_bounded_batches() -> None:
    async def scenario() -> None:
        clock = FakeClock(START)
        meters, endpoints = fleet(300, clock)
        sink = Sink()
        config = ScheduleConfig(interval_s=60, batch_size=50, frozen_read=False)
        scheduler = ReadScheduler({Transport.DLT645: MemoryLink(meters, clock)}, sink, config, clock=clock)
        for endpoint in endpoints:
            scheduler.add(endpoint)
        for _ in range(3 * 60):  # three intervals, one second at a time
            scheduler.tick(clock.advance(1))
            await scheduler.settle()
        await scheduler.flush()
        assert scheduler.stats.scheduled == 900 and scheduler.stats.collected == 900
        assert Counter(s.meter_id for s in sink.snapshots) == {e.meter_id: 3 for e in endpoints}
        assert max(len(batch) for batch in sink.batches) <= 50

    run(scenario)


def test_on_demand_reads_go_ahead_of_scheduled_reads_on_their_link() -> None:
    async def scenario() -> None:
        clock = FakeClock(START)
        meters, endpoints = fleet(40, clock, dtus=1)
        link = MemoryLink(meters, clock, faults=LinkFaults(delay_min_s=0.005, delay_max_s=0.005))
        config = ScheduleConfig(interval_s=60, frozen_read=False)
        scheduler = ReadScheduler({Transport.DLT645: link}, Sink(), config, clock=clock)
        for endpoint in endpoints:
            scheduler.add(endpoint)
        assert scheduler.tick(clock.advance(60)) == 40  # all 40 queued on one bus, one at a time
        await asyncio.sleep(0.012)
        snapshot = await scheduler.read_now(endpoints[-1], frozenset({ReadItem.RELAY}))
        assert isinstance(snapshot, MeterSnapshot) and snapshot.relay_open is False
        assert scheduler.stats.collected <= 5, "the on-demand read waited behind the scheduled ones"
        await scheduler.settle()
        assert scheduler.stats.collected == 40

    run(scenario)


def test_lost_replies_are_retried_a_bounded_number_of_times() -> None:
    async def scenario() -> None:
        clock = FakeClock(START)
        meters, endpoints = fleet(200, clock)
        link = MemoryLink(meters, clock, faults=LinkFaults(drop_reply=0.2, seed=3), timeout_s=0.001)
        config = ScheduleConfig(interval_s=60, frozen_read=False, max_retries=2)
        scheduler = ReadScheduler({Transport.DLT645: link}, Sink(), config, clock=clock)
        for endpoint in endpoints:
            scheduler.add(endpoint)
        scheduler.tick(clock.advance(60))
        await scheduler.settle()
        stats = scheduler.stats
        assert stats.scheduled == 200
        assert stats.collected + stats.failed == 200
        assert stats.retries > 20 and stats.failed < 10  # 0.2 ** 3 = 0.8 % fail three times
        assert link.stats.reads == 200 + stats.retries

    run(scenario)


def test_a_meter_back_after_an_outage_over_midnight_is_backfilled_from_its_frozen_data() -> None:
    async def scenario() -> None:
        clock = FakeClock(START)  # 23:00 local
        meters, endpoints = fleet(1, clock)
        link = MemoryLink(meters, clock)
        sink = Sink()
        gaps: list[tuple[str, dt.datetime, dt.datetime]] = []
        config = ScheduleConfig(interval_s=600, tz=SHANGHAI)
        scheduler = ReadScheduler(
            {Transport.DLT645: link}, sink, config, clock=clock, on_gap=lambda *gap: gaps.append(gap)
        )
        scheduler.add(endpoints[0], frozen_day=dt.date(2026, 11, 22))

        async def interval(offline: bool) -> None:
            link.set_offline("M-0", offline)
            scheduler.tick(clock.advance(600))
            await scheduler.settle()

        await interval(offline=False)  # 23:10
        for _ in range(6):  # 23:20 .. 00:10, unplugged over midnight
            await interval(offline=True)
        await interval(offline=False)  # 00:20: back
        await scheduler.flush()
        assert scheduler.stats.failed == 6 and scheduler.stats.gaps == 1 and len(gaps) == 1
        assert scheduler.stats.frozen_reads == 1
        last = sink.snapshots[-1]
        midnight = dt.datetime(2026, 11, 23, tzinfo=SHANGHAI)
        assert last.frozen_at == midnight and last.frozen_total_wh is not None
        assert last.total_wh is not None and last.frozen_total_wh <= last.total_wh
        frozen = [r for r in snapshot_readings([last]) if "@frozen@" in r.reading_id]
        assert frozen and frozen[0].at == midnight

    run(scenario)


def test_the_loop_reads_a_fleet_on_a_one_second_interval_in_real_time() -> None:
    async def scenario() -> None:
        clock = dt.datetime.now
        meters = build_meters(500, seed=2, now_s=int(dt.datetime.now(dt.UTC).timestamp()))
        endpoints = [
            MeterEndpoint(f"M-{i}", Transport.DLT645, m.address, f"DTU-{i % 25}") for i, m in enumerate(meters)
        ]
        link = MemoryLink({e.meter_id: m for e, m in zip(endpoints, meters, strict=True)}, lambda: clock(dt.UTC))
        sink = Sink()
        config = ScheduleConfig(interval_s=1.0, batch_size=200, batch_wait_s=0.2, frozen_read=False)
        scheduler = ReadScheduler({Transport.DLT645: link}, sink, config)
        for endpoint in endpoints:
            scheduler.add(endpoint)
        stop = asyncio.Event()
        running = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(3.0)
        stop.set()
        await running
        assert scheduler.stats.scheduled >= 1000
        assert scheduler.stats.collected_ratio >= 0.995
        assert len(sink.snapshots) == scheduler.stats.collected

    run(scenario)


# -- the in-memory link itself ---------------------------------------------------------------------------


def test_the_memory_link_applies_a_recharge_once_even_when_the_reply_is_lost() -> None:
    async def scenario() -> None:
        clock = FakeClock(START)
        meters, endpoints = fleet(1, clock)
        link = MemoryLink(meters, clock, faults=LinkFaults(drop_reply=1.0), timeout_s=0.001)
        until = START + dt.timedelta(hours=1)
        recharge = MeterCommand("pay-1", CommandKind.RECHARGE, until, amount_micros=50_000_000, purchase_count=1)
        lost = await link.execute(endpoints[0], recharge)
        assert isinstance(lost, LinkError) and lost.kind is FailureKind.TIMEOUT
        link.faults = LinkFaults()
        again = await link.execute(endpoints[0], recharge)
        assert not isinstance(again, LinkError) and again.ok and again.already_applied
        assert meters["M-0"].purchase_count == 1 and link.deliveries == {"pay-1": 2}

    run(scenario)


def test_the_memory_link_reports_offline_meters_and_refused_commands_as_values() -> None:
    async def scenario() -> None:
        clock = FakeClock(START)
        meters, endpoints = fleet(1, clock)
        link = MemoryLink(meters, clock)
        link.set_offline("M-0", True)
        assert not link.online(endpoints[0])
        offline = await link.read(endpoints[0], frozenset({ReadItem.ENERGY}))
        assert isinstance(offline, LinkError) and offline.kind is FailureKind.OFFLINE
        link.set_offline("M-0", False)
        expired = MeterCommand("c-1", CommandKind.TRIP, START - dt.timedelta(minutes=1))
        refused = await link.execute(endpoints[0], expired)
        assert isinstance(refused, LinkError) and refused.kind is FailureKind.REJECTED
        assert "valid_until" in refused.reason
        protect = await link.execute(endpoints[0], MeterCommand("c-2", CommandKind.PROTECT_ON, START + dt.timedelta(1)))
        assert not isinstance(protect, LinkError) and protect.ok
        trip = await link.execute(endpoints[0], MeterCommand("c-3", CommandKind.TRIP, START + dt.timedelta(1)))
        assert isinstance(trip, LinkError) and "power-protect" in trip.reason

    run(scenario)
