"""Property billing rules: exact splits, schedules, proration by days held, apportionment (Hypothesis)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from powergate.domain.billing import (
    Basis,
    Frequency,
    Holding,
    Schedule,
    Source,
    apportion,
    cost_of_share,
    days_held,
    periods_between,
    prorate_by_days,
    room_amount,
    shared_energy,
    split_exact,
)


@given(st.integers(0, 10**15), st.lists(st.integers(0, 10**9), min_size=1, max_size=50))
def test_a_split_adds_up_exactly_and_each_share_is_within_one_unit_of_its_proportion(
    total: int, weights: list[int]
) -> None:
    shares = split_exact(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
    whole = sum(weights)
    if whole:
        for share, weight in zip(shares, weights, strict=True):
            assert abs(share * whole - total * weight) < whole


@given(
    st.integers(0, 10**12),
    st.integers(28, 31),
    st.lists(st.tuples(st.integers(1, 20), st.integers(0, 31)), min_size=1, max_size=8),
)
def test_holders_of_a_room_never_pay_more_than_the_room_and_pay_all_of_it_when_it_was_never_empty(
    amount: int, period_days: int, raw: list[tuple[int, int]]
) -> None:
    holdings, left = [], period_days
    for account, days in raw:
        take = min(days, left)
        holdings.append(Holding(account, take))
        left -= take
    shares = prorate_by_days(amount, period_days, holdings)
    held = sum(h.days for h in holdings)
    assert sum(shares.values()) <= amount
    if held == period_days:
        assert sum(shares.values()) == amount
    assert all(share >= 0 for share in shares.values())


def test_a_mid_month_tenant_change_splits_a_per_m2_fee_by_days() -> None:
    fee = room_amount(Basis.PER_M2, 2_000_000, 5_000)  # ¥2 per m², 50 m²
    assert fee == 100_000_000
    shares = prorate_by_days(fee, 30, [Holding(1, 10), Holding(2, 20)])
    assert shares == {1: 33_333_333, 2: 66_666_667}


def test_days_held_count_the_move_out_day_for_the_next_tenant() -> None:
    first, last = dt.date(2026, 11, 1), dt.date(2026, 11, 30)
    assert days_held(first, last, dt.date(2026, 10, 1), dt.date(2026, 11, 11)) == 10
    assert days_held(first, last, dt.date(2026, 11, 11), None) == 20
    assert days_held(first, last, dt.date(2026, 12, 1), None) == 0


def test_schedules_list_their_periods_with_stable_keys() -> None:
    monthly = Schedule(Frequency.MONTHLY, dt.date(2026, 1, 1), day=5)
    found = periods_between(monthly, dt.date(2026, 1, 1), dt.date(2026, 4, 4))
    assert [p.key for p in found] == ["2026-01", "2026-02", "2026-03"]
    assert found[1].days == 28 and found[1].due_on == dt.date(2026, 2, 5)
    quarterly = Schedule(Frequency.QUARTERLY, dt.date(2026, 1, 1))
    assert [p.key for p in periods_between(quarterly, dt.date(2026, 1, 1), dt.date(2026, 12, 31))] == [
        "2026-Q1",
        "2026-Q2",
        "2026-Q3",
        "2026-Q4",
    ]
    yearly = Schedule(Frequency.YEARLY, dt.date(2025, 1, 1))
    assert [p.days for p in periods_between(yearly, dt.date(2025, 1, 1), dt.date(2028, 1, 1))] == [365, 365, 365, 366]
    once = Schedule(Frequency.ONCE, dt.date(2026, 3, 3))
    assert [p.key for p in periods_between(once, dt.date(2026, 1, 1), dt.date(2026, 12, 31))] == ["2026-03-03"]
    assert Schedule(Frequency.MONTHLY, dt.date(2026, 1, 1), day=31).problem() == (
        "day",
        "must be 1..28 (every month has it), got 31",
    )


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**12),
    st.lists(st.integers(0, 10**7), min_size=1, max_size=40),
)
def test_apportioned_energy_and_money_add_up_exactly_whatever_the_weights(
    energy: int, amount: int, weights: list[int]
) -> None:
    result = apportion(energy, amount, list(enumerate(weights)))
    assert sum(s.energy_wh for s in result.shares) == energy
    assert sum(s.amount_micros for s in result.shares) == amount


def test_a_remainder_never_goes_negative_and_its_cost_is_at_the_masters_average_price() -> None:
    assert shared_energy(Source.REMAINDER, 1_000_000, [400_000, 500_000]) == 100_000
    assert shared_energy(Source.REMAINDER, 1_000_000, [700_000, 500_000]) == 0
    assert shared_energy(Source.TOTAL, 1_000_000, [700_000]) == 1_000_000
    assert cost_of_share(600_000_000, 1_000_000, 100_000) == 60_000_000
    assert cost_of_share(1, 3, 1) == 0 and cost_of_share(2, 3, 1) == 1  # half up at the micro
