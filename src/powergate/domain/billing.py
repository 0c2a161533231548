"""Property billing rules: charge schedules, exact splits, proration by tenancy and common-area apportionment.

Pure: no I/O and no clock. Every amount is integer micros, every energy integer Wh, every area integer
centi-m² (0.01 m²), so every split is exact:

- ``split_exact`` divides a total in proportion to weights by the largest-remainder method: the shares are
  integers that add up to the total, each within one unit of its exact proportion.
- A periodic charge item has a ``Schedule`` (once, monthly on a day, quarterly, yearly); ``periods_between``
  lists the periods that started in a date range, each with a stable key (``2026-11``, ``2026-Q4``, ``2026``).
- A per-room charge for a period is shared among the accounts that held the room, by days held; the days the
  room stood empty are nobody's (``prorate_by_days``). Two tenants who together held the room all month pay the
  whole month's amount between them, to the micro.
- Common-area apportionment (公摊) shares a master meter's energy and cost (or the remainder after its
  sub-meters) among participants by fixed ratio, room area or their own usage (``apportion``). Each share carries
  its weight and the whole, so a tenant can see how it was computed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

MAX_PARTICIPANTS = 10_000
MAX_DAY_OF_MONTH = 28
"""Charges fall on day 1..28, so every month has the day."""


def split_exact(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` (>= 0) split in proportion to ``weights`` (>= 0), in integers that add up exactly to ``total``.

    Each share is first rounded down; the units left over go one each to the largest fractional parts (ties to
    the earlier weight). All weights zero: the total goes to the first.
    """
    assert total >= 0 and weights and all(w >= 0 for w in weights), (total, weights)
    whole = sum(weights)
    if whole == 0:
        return [total] + [0] * (len(weights) - 1)
    shares = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    left = total - sum(shares)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        shares[index] += 1
    return shares


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up (both non-negative, denominator positive)."""
    assert numerator >= 0 and denominator > 0, (numerator, denominator)
    return (2 * numerator + denominator) // (2 * denominator)


# --- schedules ---------------------------------------------------------------------------------------------


class Frequency(StrEnum):
    ONCE = "once"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a charge falls due: ``ONCE`` on ``start``; else every period from ``start``'s on ``day`` of its first
    month (monthly: each month; quarterly: January, April, July, October; yearly: ``start``'s month)."""

    frequency: Frequency
    start: dt.date
    day: int = 1
    end: dt.date | None = None
    """Inclusive: no period starts after it."""

    def problem(self) -> tuple[str, str] | None:
        if not 1 <= self.day <= MAX_DAY_OF_MONTH:
            return "day", f"must be 1..{MAX_DAY_OF_MONTH} (every month has it), got {self.day}"
        if self.end is not None and self.end < self.start:
            return "end", f"{self.end.isoformat()} is before start {self.start.isoformat()}"
        return None


@dataclass(frozen=True, slots=True)
class Period:
    key: str
    """Stable name of the period: ``2026-11-05`` (once), ``2026-11``, ``2026-Q4``, ``2026``."""
    first: dt.date
    last: dt.date
    """Inclusive."""
    due_on: dt.date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def _month_start(year: int, month: int) -> dt.date:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return dt.date(year, month, 1)


def period_of(frequency: Frequency, day: dt.date, due_day: int = 1) -> Period:
    """The period of ``frequency`` that contains ``day``."""
    if frequency is Frequency.ONCE:
        return Period(day.isoformat(), day, day, day)
    if frequency is Frequency.MONTHLY:
        first, months, key = dt.date(day.year, day.month, 1), 1, f"{day.year}-{day.month:02d}"
    elif frequency is Frequency.QUARTERLY:
        quarter = (day.month - 1) // 3
        first, months, key = dt.date(day.year, quarter * 3 + 1, 1), 3, f"{day.year}-Q{quarter + 1}"
    else:
        first, months, key = dt.date(day.year, 1, 1), 12, f"{day.year}"
    last = _month_start(first.year, first.month + months) - dt.timedelta(days=1)
    return Period(key, first, last, first.replace(day=due_day))


def periods_between(schedule: Schedule, since: dt.date, until: dt.date) -> list[Period]:
    """The periods whose due date falls in [since, until] and on or after the schedule's start (and not after
    its end), oldest first."""
    assert schedule.problem() is None, schedule.problem()
    if schedule.frequency is Frequency.ONCE:
        due = schedule.start
        return [period_of(Frequency.ONCE, due)] if since <= due <= until else []
    found: list[Period] = []
    cursor = period_of(schedule.frequency, schedule.start, schedule.day)
    while cursor.due_on <= until:
        if (
            cursor.due_on >= since
            and cursor.due_on >= schedule.start
            and (schedule.end is None or cursor.first <= schedule.end)
        ):
            found.append(cursor)
        cursor = period_of(schedule.frequency, cursor.last + dt.timedelta(days=1), schedule.day)
    return found


# --- charges -----------------------------------------------------------------------------------------------


class Basis(StrEnum):
    FIXED = "fixed"
    """A fixed amount per room and period."""
    PER_M2 = "per_m2"
    """A price per m² of the room's area per period."""


def room_amount(basis: Basis, rate_micros: int, area_centi_m2: int) -> int:
    """A room's charge for one whole period: the fixed amount, or price × area (rounded half up to the micro)."""
    assert rate_micros >= 0 and area_centi_m2 >= 0
    if basis is Basis.FIXED:
        return rate_micros
    return round_half_up(rate_micros * area_centi_m2, 100)


@dataclass(frozen=True, slots=True)
class Holding:
    """An account held a room for ``days`` days of a period."""

    account_id: int
    days: int


def prorate_by_days(amount_micros: int, period_days: int, holdings: Sequence[Holding]) -> dict[int, int]:
    """Each account's share of a room's period amount, by days held; days nobody held are not charged.

    The shares of all holders plus the empty days' share add up to ``amount_micros`` exactly; an account that
    held the room several times in the period gets one share for all its days.
    """
    assert period_days > 0 and amount_micros >= 0
    by_account: dict[int, int] = {}
    for holding in holdings:
        assert holding.days >= 0
        by_account[holding.account_id] = by_account.get(holding.account_id, 0) + holding.days
    held = sum(by_account.values())
    assert held <= period_days, f"{held} days held in a period of {period_days}"
    ids = sorted(by_account)
    shares = split_exact(amount_micros, [by_account[i] for i in ids] + [period_days - held])
    return {account: share for account, share in zip(ids, shares, strict=False) if by_account[account] > 0}


def days_held(first: dt.date, last: dt.date, held_from: dt.date, held_to: dt.date | None) -> int:
    """Days of [first, last] within [held_from, held_to) (``held_to`` exclusive: the day a tenant moved out
    belongs to the next one)."""
    start = max(first, held_from)
    end = last + dt.timedelta(days=1) if held_to is None else min(last + dt.timedelta(days=1), held_to)
    return max(0, (end - start).days)


# --- apportionment -----------------------------------------------------------------------------------------


class Method(StrEnum):
    RATIO = "ratio"
    """Fixed parts per participant (e.g. 3 : 2 : 1)."""
    AREA = "area"
    """By each participant's room area."""
    USAGE = "usage"
    """By each participant's own metered energy in the month."""


class Source(StrEnum):
    TOTAL = "total"
    """The master meter's whole consumption is shared."""
    REMAINDER = "remainder"
    """What the master meter measured beyond its sub-meters (losses, public lighting, lifts)."""


@dataclass(frozen=True, slots=True)
class Share:
    account_id: int
    weight: int
    """Parts, centi-m² or Wh, by method."""
    energy_wh: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class Apportionment:
    energy_wh: int
    """What is shared."""
    amount_micros: int
    weight_total: int
    shares: tuple[Share, ...]


def shared_energy(source: Source, master_wh: int, sub_meters_wh: Sequence[int]) -> int:
    """The energy to share: the master's, or its remainder after the sub-meters (never negative: sub-meters that
    add up to more than the master, within their accuracy, leave nothing)."""
    assert master_wh >= 0 and all(w >= 0 for w in sub_meters_wh)
    if source is Source.TOTAL:
        return master_wh
    return max(0, master_wh - sum(sub_meters_wh))


def apportion(energy_wh: int, amount_micros: int, weights: Sequence[tuple[int, int]]) -> Apportionment:
    """Share ``energy_wh`` and ``amount_micros`` by ``weights`` ((account id, weight), unique accounts); both
    sums are exact. All weights zero (nobody used anything): equal shares."""
    assert energy_wh >= 0 and amount_micros >= 0
    assert 0 < len(weights) <= MAX_PARTICIPANTS, len(weights)
    assert len({account for account, _ in weights}) == len(weights), "an account takes part once"
    values = [w for _, w in weights]
    if sum(values) == 0:
        values = [1] * len(values)
    energies = split_exact(energy_wh, values)
    amounts = split_exact(amount_micros, values)
    shares = tuple(
        Share(account, weight, energy, amount)
        for (account, _), weight, energy, amount in zip(weights, values, energies, amounts, strict=True)
    )
    return Apportionment(energy_wh, amount_micros, sum(values), shares)


def cost_of_share(master_cost_micros: int, master_wh: int, shared_wh: int) -> int:
    """The cost of ``shared_wh`` at the master meter's average price (rounded half up to the micro)."""
    assert master_cost_micros >= 0 and shared_wh >= 0 and master_wh >= 0
    if master_wh == 0:
        return 0
    return round_half_up(master_cost_micros * shared_wh, master_wh)
