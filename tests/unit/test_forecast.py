"""Run-out forecast: worked examples in both languages and properties of the time left."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.domain.forecast import HORIZON_DAYS, SECONDS_PER_DAY, forecast, spending_rate

costs = st.lists(st.integers(0, 10**9), max_size=14)


@pytest.mark.parametrize(
    ("balance_micros", "daily_costs", "english", "chinese"),
    [
        (20_000_000, [10_000_000] * 7, "about 2 days left", "约 2 天"),
        (5_000_000, [10_000_000] * 7, "about 12 hours left", "约 12 小时"),
        (100_000, [10_000_000] * 7, "less than an hour left", "不到 1 小时"),
        (0, [10_000_000] * 7, "no credit left", "余额已用完"),
        (-3_000_000, [10_000_000], "no credit left", "余额已用完"),
        (100_000_000, [0] * 7, "more than 365 days left", "超过 365 天"),
    ],
)
def test_the_forecast_reads_as_a_person_would_say_it(
    balance_micros: int, daily_costs: list[int], english: str, chinese: str
) -> None:
    result = forecast(balance_micros, daily_costs)
    assert (result.text("en"), result.text("zh")) == (english, chinese)


def test_recent_days_weigh_more_than_old_ones() -> None:
    assert spending_rate([1_000_000] * 6 + [9_000_000]) > spending_rate([9_000_000] + [1_000_000] * 6)


def test_a_week_without_consumption_falls_back_to_the_floor() -> None:
    assert spending_rate([0] * 7, floor_micros_per_day=250_000) == 250_000


@given(low=st.integers(-(10**9), 10**10), extra=st.integers(0, 10**10), history=costs)
def test_more_balance_never_means_less_time(low: int, extra: int, history: list[int]) -> None:
    assert forecast(low, history).seconds_left <= forecast(low + extra, history).seconds_left


@given(balance=st.integers(-(10**10), 0), history=costs)
def test_a_zero_or_negative_balance_has_no_time_left(balance: int, history: list[int]) -> None:
    assert forecast(balance, history).seconds_left == 0


@given(balance=st.integers(0, 10**12), history=costs)
def test_the_time_left_stays_within_the_horizon(balance: int, history: list[int]) -> None:
    assert 0 <= forecast(balance, history).seconds_left <= HORIZON_DAYS * SECONDS_PER_DAY
