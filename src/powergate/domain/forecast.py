"""Run-out forecast: how long the current balance lasts at the recent rate of spending.

The rate is an exponentially weighted mean of recent daily costs (micros a day, oldest first, newest weighted
most: weight ``ALPHA`` = 3/10), computed in exact fractions: the forecast never touches a float. A floor
(``floor_micros_per_day``) keeps a week of zero consumption from saying "forever"; the answer is capped at
``HORIZON_DAYS``.

Invariants: the time left is never negative, is zero at a zero or negative balance, and never decreases when
the balance grows (the rate does not depend on the balance). Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

ALPHA = Fraction(3, 10)
SECONDS_PER_DAY = 86_400
HORIZON_DAYS = 365
DEFAULT_FLOOR_MICROS_PER_DAY = 100_000
"""0.10 yuan a day: the slowest spending assumed (standby loads, standing charges)."""
MAX_DAYS_OF_HISTORY = 62


@dataclass(frozen=True, slots=True)
class Forecast:
    seconds_left: int
    """0 .. HORIZON_DAYS days, in seconds."""
    rate_micros_per_day: int
    capped: bool
    """True when the balance lasts beyond the horizon."""
    early_estimate: bool = False
    """True when the rate comes from the first readings of a new account, not from frozen days."""

    def text(self, language: str = "en") -> str:
        return describe(self, language)


def spending_rate(daily_costs_micros: Sequence[int], floor_micros_per_day: int = DEFAULT_FLOOR_MICROS_PER_DAY) -> int:
    """The weighted daily spending (micros a day, rounded up), never below the floor."""
    assert floor_micros_per_day > 0, "a zero floor would forecast forever"
    assert len(daily_costs_micros) <= MAX_DAYS_OF_HISTORY and all(c >= 0 for c in daily_costs_micros)
    if not daily_costs_micros:
        return floor_micros_per_day
    mean = Fraction(daily_costs_micros[0])
    for cost in daily_costs_micros[1:]:
        mean = ALPHA * cost + (1 - ALPHA) * mean
    return max(-(-mean.numerator // mean.denominator), floor_micros_per_day)


def forecast(
    balance_micros: int,
    daily_costs_micros: Sequence[int],
    floor_micros_per_day: int = DEFAULT_FLOOR_MICROS_PER_DAY,
) -> Forecast:
    """Time left at ``balance_micros`` spending at the recent rate."""
    rate = spending_rate(daily_costs_micros, floor_micros_per_day)
    if balance_micros <= 0:
        return Forecast(0, rate, False)
    seconds = balance_micros * SECONDS_PER_DAY // rate
    horizon = HORIZON_DAYS * SECONDS_PER_DAY
    return Forecast(min(seconds, horizon), rate, seconds > horizon)


def describe(result: Forecast, language: str = "en") -> str:
    """ "about 2 days left" / "约 2 天"; hours under two days; "less than an hour" under one; an early
    estimate says so: "about 2 days left (early estimate)" / "约 2 天（初步估算）"."""
    text = _describe(result, language)
    if result.early_estimate and result.seconds_left > 0:
        return f"{text}（初步估算）" if language == "zh" else f"{text} (early estimate)"
    return text


def _describe(result: Forecast, language: str) -> str:
    assert language in ("en", "zh"), language
    zh = language == "zh"
    seconds = result.seconds_left
    if seconds == 0:
        return "余额已用完" if zh else "no credit left"
    if result.capped:
        return f"超过 {HORIZON_DAYS} 天" if zh else f"more than {HORIZON_DAYS} days left"
    if seconds < 3_600:
        return "不到 1 小时" if zh else "less than an hour left"
    if seconds < 2 * SECONDS_PER_DAY:
        hours = (seconds + 1_800) // 3_600
        return f"约 {hours} 小时" if zh else f"about {hours} hour{'s' if hours != 1 else ''} left"
    days = (seconds + SECONDS_PER_DAY // 2) // SECONDS_PER_DAY
    return f"约 {days} 天" if zh else f"about {days} days left"
