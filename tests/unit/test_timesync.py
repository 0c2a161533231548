"""Time sync policy: when a meter's clock is set, how, and when it is an alarm instead (worked examples, then
properties over random read sequences)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergate.headend.model import CommandKind, MeterEndpoint, MeterSnapshot, Transport
from powergate.headend.timesync import (
    TimeSyncAction,
    TimeSyncPlanner,
    TimeSyncPolicy,
    clock_offset_s,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 3, 2, 4, 0, tzinfo=dt.UTC)  # 12:00 in Shanghai
DLT645 = MeterEndpoint("m1", Transport.DLT645, "000000000001", "dtu-1")
MQTT = MeterEndpoint("m2", Transport.MQTT, "000000000002", "site-1")


def read(endpoint: MeterEndpoint, at: dt.datetime, offset_s: int | None) -> MeterSnapshot:
    """A clock read at ``at`` of a meter ``offset_s`` ahead, as DL/T 645 reports it (naive site-local time)."""
    if offset_s is None:
        return MeterSnapshot(endpoint.meter_id, at)
    local = (at + dt.timedelta(seconds=offset_s)).astimezone(SHANGHAI).replace(tzinfo=None)
    return MeterSnapshot(endpoint.meter_id, at, meter_time=local)


@pytest.mark.parametrize(
    ("endpoint", "at", "offset_s", "action"),
    [
        (DLT645, NOON, None, TimeSyncAction.NONE),
        (DLT645, NOON, 59, TimeSyncAction.NONE),
        (DLT645, NOON, -60, TimeSyncAction.NONE),
        (DLT645, NOON, 61, TimeSyncAction.BROADCAST),
        (DLT645, NOON, -300, TimeSyncAction.BROADCAST),
        (DLT645, NOON, 301, TimeSyncAction.SYNC),  # a broadcast that far is ignored by the meters
        (MQTT, NOON, 120, TimeSyncAction.SYNC),  # no broadcast outside an RS485 bus
        (DLT645, NOON, 86_400, TimeSyncAction.SYNC),
        (DLT645, NOON, 86_401, TimeSyncAction.ALARM),
        (DLT645, NOON, -20 * 365 * 86_400, TimeSyncAction.ALARM),  # reset to 2006: look at it, do not sync
        (DLT645, dt.datetime(2026, 3, 2, 15, 57, tzinfo=dt.UTC), 120, TimeSyncAction.DEFER),  # 23:57 local
        (DLT645, dt.datetime(2026, 3, 2, 16, 4, tzinfo=dt.UTC), -120, TimeSyncAction.DEFER),  # 00:04 local
        (DLT645, dt.datetime(2026, 3, 2, 15, 50, tzinfo=dt.UTC), 480, TimeSyncAction.DEFER),  # meter reads 23:58
        (DLT645, dt.datetime(2026, 3, 2, 16, 6, tzinfo=dt.UTC), 120, TimeSyncAction.BROADCAST),  # 00:06 local
    ],
)
def test_a_first_decision_follows_the_rules_in_order(
    endpoint: MeterEndpoint, at: dt.datetime, offset_s: int | None, action: TimeSyncAction
) -> None:
    decision = TimeSyncPlanner().decide(endpoint, read(endpoint, at, offset_s), at, SHANGHAI)
    assert decision.action is action, decision
    assert decision.offset_s == (offset_s or 0)


def test_a_meter_is_synced_at_most_once_a_day() -> None:
    planner = TimeSyncPlanner()
    first = planner.decide(MQTT, read(MQTT, NOON, 120), NOON, SHANGHAI)
    later = NOON + dt.timedelta(hours=23)
    again = planner.decide(MQTT, read(MQTT, later, 120), later, SHANGHAI)
    tomorrow = NOON + dt.timedelta(hours=24)
    next_day = planner.decide(MQTT, read(MQTT, tomorrow, 120), tomorrow, SHANGHAI)
    assert [first.action, again.action, next_day.action] == [
        TimeSyncAction.SYNC,
        TimeSyncAction.NONE,
        TimeSyncAction.SYNC,
    ]
    assert "once a day" in again.reason


def test_one_broadcast_a_day_covers_every_meter_of_the_dtu() -> None:
    planner = TimeSyncPlanner()
    other = MeterEndpoint("m3", Transport.DLT645, "000000000003", "dtu-1")
    elsewhere = MeterEndpoint("m4", Transport.DLT645, "000000000004", "dtu-2")
    actions = [planner.decide(e, read(e, NOON, 90), NOON, SHANGHAI).action for e in (DLT645, other, elsewhere)]
    assert actions == [TimeSyncAction.BROADCAST, TimeSyncAction.NONE, TimeSyncAction.BROADCAST]


def test_a_link_spends_at_most_its_hourly_budget_then_defers() -> None:
    planner = TimeSyncPlanner(TimeSyncPolicy(max_per_hour=3))
    meters = [MeterEndpoint(f"m{i}", Transport.MQTT, f"{i:012d}", "site-1") for i in range(5)]
    actions = [planner.decide(m, read(m, NOON, 100), NOON, SHANGHAI).action for m in meters]
    assert actions == [TimeSyncAction.SYNC] * 3 + [TimeSyncAction.DEFER] * 2
    an_hour_later = NOON + dt.timedelta(hours=1)
    assert planner.decide(meters[3], read(meters[3], an_hour_later, 100), an_hour_later, SHANGHAI).action is (
        TimeSyncAction.SYNC
    )


def test_a_clock_alarm_is_raised_once_a_day_not_on_every_read() -> None:
    planner = TimeSyncPlanner()
    reads = [NOON + dt.timedelta(minutes=15 * i) for i in range(4)]
    actions = [planner.decide(DLT645, read(DLT645, at, -(10**8)), at, SHANGHAI).action for at in reads]
    assert actions == [TimeSyncAction.ALARM] + [TimeSyncAction.NONE] * 3


def test_an_aware_meter_time_is_compared_as_it_is() -> None:
    snapshot = MeterSnapshot("m2", NOON, meter_time=NOON.astimezone(SHANGHAI) + dt.timedelta(seconds=75))
    assert clock_offset_s(snapshot, dt.UTC) == 75


def test_the_sync_command_sets_the_head_end_time_and_expires_soon() -> None:
    command = TimeSyncPlanner.command("ts-1", NOON, valid_s=120)
    assert command.kind is CommandKind.TIME_SYNC and command.at == NOON
    assert command.valid_until == NOON + dt.timedelta(seconds=120)


def test_memory_is_bounded_and_a_full_table_defers_rather_than_forgets_an_hourly_count() -> None:
    planner = TimeSyncPlanner(max_tracked=10)
    actions = []
    for i in range(50):
        endpoint = MeterEndpoint(f"m{i}", Transport.MQTT, f"{i:012d}", f"site-{i}")
        actions.append(planner.decide(endpoint, read(endpoint, NOON, 200), NOON, SHANGHAI).action)
    assert actions == [TimeSyncAction.SYNC] * 10 + [TimeSyncAction.DEFER] * 40  # hourly counts are not dropped
    assert len(planner._last) == 10 and len(planner._hourly) == 10
    an_hour_later = NOON + dt.timedelta(hours=1)
    endpoint = MeterEndpoint("m99", Transport.MQTT, "000000000099", "site-99")
    assert planner.decide(endpoint, read(endpoint, an_hour_later, 200), an_hour_later, SHANGHAI).action is (
        TimeSyncAction.SYNC
    )
    assert len(planner._last) == 10 and len(planner._hourly) == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 3 * 86_400), st.integers(-2 * 86_400, 2 * 86_400)),
        min_size=1,
        max_size=120,
    ),
    st.integers(1, 5),
)
def test_no_sequence_of_reads_breaks_the_daily_or_hourly_limits(
    reads: list[tuple[int, int, int]], max_per_hour: int
) -> None:
    policy = TimeSyncPolicy(max_per_hour=max_per_hour)
    planner = TimeSyncPlanner(policy)
    meters = [MeterEndpoint(f"m{i}", Transport.DLT645 if i % 2 else Transport.MQTT, f"{i:012d}", f"l{i % 3}")
              for i in range(10)]  # fmt: skip
    syncs: list[tuple[str, str, dt.datetime]] = []
    for index, second, offset_s in sorted(reads, key=lambda r: r[1]):
        at = NOON + dt.timedelta(seconds=second)
        endpoint = meters[index]
        decision = planner.decide(endpoint, read(endpoint, at, offset_s), at, SHANGHAI)
        if decision.action in (TimeSyncAction.SYNC, TimeSyncAction.BROADCAST):
            assert policy.threshold_s < abs(offset_s) <= policy.sanity_limit_s
            target = endpoint.link_id if decision.action is TimeSyncAction.BROADCAST else endpoint.meter_id
            syncs.append((endpoint.link_id, f"{decision.action}:{target}", at))
    for link_id, target, at in syncs:
        same_target = [t for _, name, t in syncs if name == target and dt.timedelta(0) <= at - t < dt.timedelta(days=1)]
        assert same_target == [at], f"{target} synced twice within a day"
        in_hour = [t for link, _, t in syncs if link == link_id and dt.timedelta(0) <= at - t < dt.timedelta(hours=1)]
        assert len(in_hour) <= max_per_hour
