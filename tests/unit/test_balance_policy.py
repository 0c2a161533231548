"""The balance policy as worked examples and properties: warnings once per crossing, trips never inside a
friendly window, never for a protected wallet, deferred trips at the window's end, closes after a recharge."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergate.domain.balance_policy import FriendlyWindow, Policy, PolicyState, decide
from powergate.domain.calendar import SiteCalendar

YUAN = 1_000_000
TZ = ZoneInfo("Asia/Shanghai")
DAY_TYPE = SiteCalendar.china().day_type
NO_WINDOW = Policy(window=None)


def local(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=TZ).astimezone(dt.UTC)


WEDNESDAY_NOON = local("2026-11-25T12:00")


def run(policy: Policy, balances: list[int], now: dt.datetime = WEDNESDAY_NOON) -> list[tuple[int, ...]]:
    state = PolicyState()
    fired = []
    for balance in balances:
        decision = decide(policy, state, balance, now, TZ, DAY_TYPE)
        state = decision.state
        fired.append(decision.warnings_micros)
    return fired


def test_each_default_level_fires_once_as_the_balance_runs_down() -> None:
    balances = [60 * YUAN, 49 * YUAN, 45 * YUAN, 19 * YUAN, 15 * YUAN, 10 * YUAN, 5 * YUAN]
    assert run(NO_WINDOW, balances) == [(), (50 * YUAN,), (), (20 * YUAN,), (), (10 * YUAN,), ()]


def test_a_recharge_re_arms_only_the_levels_it_lifts_the_balance_above() -> None:
    balances = [15 * YUAN, 30 * YUAN, 19 * YUAN]
    assert run(NO_WINDOW, balances) == [(50 * YUAN, 20 * YUAN), (), (20 * YUAN,)]


def test_the_relay_trips_at_zero_and_closes_when_a_recharge_passes_the_reconnect_threshold() -> None:
    policy = Policy(window=None, reconnect_micros=5 * YUAN)
    tripped = decide(policy, PolicyState(), 0, WEDNESDAY_NOON, TZ, DAY_TYPE)
    assert tripped.trip and not tripped.state.supply_on
    low = decide(policy, tripped.state, 4 * YUAN, WEDNESDAY_NOON, TZ, DAY_TYPE)
    assert not low.close and not low.state.supply_on
    restored = decide(policy, low.state, 5 * YUAN, WEDNESDAY_NOON, TZ, DAY_TYPE)
    assert restored.close and restored.state.supply_on


def test_the_overdraft_limit_moves_the_trip_line_below_zero() -> None:
    policy = Policy(window=None, overdraft_limit_micros=10 * YUAN)
    assert not decide(policy, PolicyState(), -9 * YUAN, WEDNESDAY_NOON, TZ, DAY_TYPE).trip
    assert decide(policy, PolicyState(), -10 * YUAN, WEDNESDAY_NOON, TZ, DAY_TYPE).trip


@pytest.mark.parametrize(
    ("when", "trip_at"),
    [
        ("2026-11-25T12:00", None),  # Wednesday noon: trip now
        ("2026-11-25T21:30", "2026-11-26T08:00"),  # Wednesday night: next morning
        ("2026-11-26T07:59", "2026-11-26T08:00"),
        ("2026-11-27T20:00", "2026-11-30T08:00"),  # Friday evening: Monday morning
        ("2026-11-28T12:00", "2026-11-30T08:00"),  # Saturday
        ("2026-10-01T12:00", "2026-10-08T08:00"),  # National Day holiday (Oct 1-7 2026): after it
    ],
)
def test_a_trip_inside_the_friendly_window_is_deferred_to_its_end(when: str, trip_at: str | None) -> None:
    decision = decide(Policy(), PolicyState(), 0, local(when), TZ, DAY_TYPE)
    if trip_at is None:
        assert decision.trip and decision.state.trip_due_at is None
    else:
        assert not decision.trip and decision.deferred_until == local(trip_at)
        assert decision.state.supply_on and decision.state.trip_due_at == local(trip_at)
        due = decide(Policy(), decision.state, 0, local(trip_at), TZ, DAY_TYPE)
        assert due.trip, "at the window's end, still short: trip"


def test_a_recharge_inside_the_window_cancels_the_deferred_trip() -> None:
    night = local("2026-11-25T21:30")
    deferred = decide(Policy(), PolicyState(), 0, night, TZ, DAY_TYPE)
    recharged = decide(Policy(), deferred.state, 30 * YUAN, night, TZ, DAY_TYPE)
    assert recharged.state.trip_due_at is None
    assert not decide(Policy(), recharged.state, 30 * YUAN, local("2026-11-26T08:00"), TZ, DAY_TYPE).trip


def test_temporary_supply_defers_the_trip_to_its_end_and_closes_a_tripped_wallet() -> None:
    until = WEDNESDAY_NOON + dt.timedelta(hours=2)
    policy = Policy(window=None, temporary_until=until)
    closed = decide(policy, PolicyState(supply_on=False), -1, WEDNESDAY_NOON, TZ, DAY_TYPE)
    assert closed.close and closed.state.supply_on
    again = decide(policy, closed.state, -2, WEDNESDAY_NOON + dt.timedelta(minutes=1), TZ, DAY_TYPE)
    assert not again.trip and again.state.trip_due_at == until
    assert decide(policy, again.state, -2, until, TZ, DAY_TYPE).trip


def test_a_custom_nightly_window_without_non_workdays() -> None:
    window = FriendlyWindow(22 * 60, 6 * 60, non_workdays=False)
    saturday_noon = local("2026-11-28T12:00")
    assert decide(Policy(window=window), PolicyState(), 0, saturday_noon, TZ, DAY_TYPE).trip


# -- properties -----------------------------------------------------------------------------------------------

levels = st.lists(st.integers(0, 100 * YUAN), min_size=0, max_size=6, unique=True).map(tuple)
instants = st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2027, 12, 31), timezones=st.just(dt.UTC))
steps = st.lists(st.tuples(st.integers(-20 * YUAN, 120 * YUAN), st.integers(0, 36 * 3600)), max_size=40)
windows = st.one_of(
    st.none(),
    st.builds(FriendlyWindow, st.integers(0, 1439), st.integers(0, 1439), st.booleans()),
)
policies = st.builds(
    Policy,
    warning_levels_micros=levels,
    reconnect_micros=st.integers(0, 10 * YUAN),
    overdraft_limit_micros=st.integers(0, 10 * YUAN),
    power_protect=st.booleans(),
    window=windows,
)


@settings(max_examples=300, deadline=None)
@given(policies, instants, steps)
def test_properties_of_any_run_of_balances(policy: Policy, start: dt.datetime, run_of: list[tuple[int, int]]) -> None:
    state, now, previous = PolicyState(), start, None
    armed = set(policy.warning_levels_micros)
    for balance, seconds in run_of:
        now += dt.timedelta(seconds=seconds)
        decision = decide(policy, state, balance, now, TZ, DAY_TYPE)
        for level in policy.warning_levels_micros:
            if previous is not None and balance > level:
                armed.add(level)  # re-armed by a balance above it
        for level in decision.warnings_micros:
            assert level in armed, "a level never fires twice without a re-arm"
            armed.discard(level)
            assert balance <= level
        if policy.power_protect:
            assert not decision.trip, "a protected wallet never trips"
        if decision.trip and policy.window is not None:
            assert not policy.window.contains(now.astimezone(TZ), DAY_TYPE), "never trip inside the window"
        if decision.close:
            assert not state.supply_on, "close only what is off"
        state, previous = decision.state, balance
