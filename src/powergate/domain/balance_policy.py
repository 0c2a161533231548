"""Balance policy: what a prepaid wallet's new balance means for its tenant and its relay.

Given a wallet's policy (warning levels, reconnect threshold, overdraft limit, power-protect, temporary supply,
friendly-credit window), its previous policy state (levels fired, supply on or off, a trip deferred to some
time) and its balance now, ``decide`` returns the new state and the decisions: warnings to send, a trip now, a
close now. Pure: time is passed in, the site's time zone and calendar are passed in, nothing is read or written.

Invariants (checked by Hypothesis in tests/unit/test_balance_policy.py):
- A warning level fires once per crossing: it is marked fired when the balance is at or below it, and only a
  balance above it again (a recharge; a deduction never lifts a balance) re-arms it.
- A power-protect wallet never trips; a wallet on temporary supply does not trip before the supply ends (the
  trip is deferred to that instant).
- A trip is never decided inside a friendly-credit window: it is deferred to the window's end, and decided
  then only if the balance is still short.
- A close is decided only for a wallet whose supply is off, and only once its balance is above both the trip
  line (``-overdraft_limit``) and the reconnect threshold (or the wallet is protected / on temporary supply).
Supply state here is the platform's intent (what it last commanded), not the relay as read back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

from powergate.domain.calendar import DayType

MICROS_PER_YUAN = 1_000_000
DEFAULT_WARNING_LEVELS_MICROS = (50 * MICROS_PER_YUAN, 20 * MICROS_PER_YUAN, 10 * MICROS_PER_YUAN)
MAX_WARNING_LEVELS = 16
MAX_WINDOW_SEARCH_DAYS = 62
"""Bound on the days looked ahead for the end of a friendly window (the longest holiday run is ~9 days)."""
MINUTES_PER_DAY = 24 * 60

DayTypeOf = Callable[[dt.date], DayType]
"""A site calendar's ``day_type``."""


@dataclass(frozen=True, slots=True)
class FriendlyWindow:
    """When supply is never cut: every night from ``start_minute`` to ``end_minute`` (site-local minutes of the
    day, wrapping midnight), and all day on non-workdays (weekends, holidays) when ``non_workdays``."""

    start_minute: int = 20 * 60
    end_minute: int = 8 * 60
    non_workdays: bool = True

    def __post_init__(self) -> None:
        assert 0 <= self.start_minute < MINUTES_PER_DAY and 0 <= self.end_minute < MINUTES_PER_DAY, self

    def contains(self, local: dt.datetime, day_type: DayTypeOf) -> bool:
        """Is the site-local instant ``local`` inside the window? The window's end itself is outside."""
        if self.non_workdays and day_type(local.date()) is not DayType.WORKDAY:
            return True
        minute = local.hour * 60 + local.minute
        start, end = self.start_minute, self.end_minute
        if start == end:
            return False  # no nightly part
        if start < end:
            return start <= minute < end
        return minute >= start or minute < end

    def end_after(self, local: dt.datetime, day_type: DayTypeOf) -> dt.datetime:
        """The first site-local instant at or after ``local`` outside the window."""
        tz = local.tzinfo
        assert tz is not None, "a window is evaluated in site-local, aware time"
        for _ in range(3 * MAX_WINDOW_SEARCH_DAYS):
            if not self.contains(local, day_type):
                return local
            local = self._next_boundary(local)
        raise AssertionError(f"no end of the friendly window within {MAX_WINDOW_SEARCH_DAYS} days of {local}")

    def _next_boundary(self, local: dt.datetime) -> dt.datetime:
        """The next instant at which ``contains`` may change: the nightly end today, else the next midnight."""
        minute = local.hour * 60 + local.minute
        day = local.date()
        if minute < self.end_minute:
            hour, minute_of_hour = divmod(self.end_minute, 60)
            return dt.datetime.combine(day, dt.time(hour, minute_of_hour), tzinfo=local.tzinfo)
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0), tzinfo=local.tzinfo)


@dataclass(frozen=True, slots=True)
class Policy:
    """One wallet's balance policy. Amounts in micros."""

    warning_levels_micros: tuple[int, ...] = DEFAULT_WARNING_LEVELS_MICROS
    reconnect_micros: int = 0
    """After a trip, supply comes back only once the balance is at least this (and above the trip line)."""
    overdraft_limit_micros: int = 0
    """The trip line is ``-overdraft_limit_micros``: the balance at or below it trips."""
    power_protect: bool = False
    temporary_until: dt.datetime | None = None
    window: FriendlyWindow | None = field(default_factory=FriendlyWindow)

    def __post_init__(self) -> None:
        assert len(self.warning_levels_micros) <= MAX_WARNING_LEVELS, self.warning_levels_micros
        assert len(set(self.warning_levels_micros)) == len(self.warning_levels_micros), "levels are distinct"
        assert self.overdraft_limit_micros >= 0 and self.reconnect_micros >= 0, self
        assert self.temporary_until is None or self.temporary_until.tzinfo is not None


@dataclass(frozen=True, slots=True)
class PolicyState:
    fired_micros: frozenset[int] = frozenset()
    """Warning levels that have fired and not been re-armed."""
    supply_on: bool = True
    trip_due_at: dt.datetime | None = None
    """A trip deferred to this instant (end of a friendly window or of temporary supply)."""


@dataclass(frozen=True, slots=True)
class Decision:
    state: PolicyState
    warnings_micros: tuple[int, ...] = ()
    """Levels that fired now, highest first."""
    trip: bool = False
    close: bool = False
    deferred_until: dt.datetime | None = None
    """Set when a trip became due now but was deferred (it is also ``state.trip_due_at``)."""

    @property
    def changed(self) -> bool:
        return bool(self.warnings_micros) or self.trip or self.close or self.deferred_until is not None


def decide(
    policy: Policy, state: PolicyState, balance_micros: int, now: dt.datetime, tz: ZoneInfo, day_type: DayTypeOf
) -> Decision:
    """The new state and the decisions for a wallet whose balance is now ``balance_micros``."""
    assert now.tzinfo is not None, "now must be timezone-aware"
    fired, warnings = _warnings(policy.warning_levels_micros, state.fired_micros, balance_micros)
    state = replace(state, fired_micros=fired)
    short = balance_micros + policy.overdraft_limit_micros <= 0
    if not state.supply_on:
        if not _may_close(policy, balance_micros, now, short):
            return Decision(state, warnings)
        return Decision(replace(state, supply_on=True, trip_due_at=None), warnings, close=True)
    if not short or policy.power_protect:
        return Decision(replace(state, trip_due_at=None), warnings)
    allowed = _earliest_trip(policy, now, tz, day_type)
    if allowed > now:
        deferred = None if state.trip_due_at == allowed else allowed
        return Decision(replace(state, trip_due_at=allowed), warnings, deferred_until=deferred)
    return Decision(replace(state, supply_on=False, trip_due_at=None), warnings, trip=True)


def _warnings(
    levels: tuple[int, ...], fired: frozenset[int], balance_micros: int
) -> tuple[frozenset[int], tuple[int, ...]]:
    """(levels fired after this balance, levels that fire now). Re-arms every level the balance is above."""
    still = frozenset(level for level in fired if level in levels and balance_micros <= level)
    new = tuple(sorted((lv for lv in levels if balance_micros <= lv and lv not in still), reverse=True))
    return still | frozenset(new), new


def _may_close(policy: Policy, balance_micros: int, now: dt.datetime, short: bool) -> bool:
    if policy.power_protect or _on_temporary_supply(policy, now):
        return True
    return not short and balance_micros >= policy.reconnect_micros


def _on_temporary_supply(policy: Policy, now: dt.datetime) -> bool:
    return policy.temporary_until is not None and now < policy.temporary_until


def _earliest_trip(policy: Policy, now: dt.datetime, tz: ZoneInfo, day_type: DayTypeOf) -> dt.datetime:
    """The first instant at or after ``now`` at which a short wallet may be tripped."""
    start = now
    if _on_temporary_supply(policy, now):
        assert policy.temporary_until is not None
        start = policy.temporary_until
    if policy.window is None:
        return start
    return policy.window.end_after(start.astimezone(tz), day_type).astimezone(dt.UTC)
