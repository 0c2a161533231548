"""Time sync policy: when to set a meter's clock, how, and when a clock is too wrong to touch.

A meter's clock decides which TOU band its energy lands in and when it freezes its day, so a drifting clock
bills the wrong price; but setting clocks is itself a risk (a wrong sync moves a freeze, a storm of syncs
loads the bus), so every sync passes these rules, checked in this order:

1. no clock read, nothing to decide (``NONE``);
2. off by more than ``sanity_limit_s`` (a dead clock battery, a meter reset to 2000-01-01): ``ALARM``, never a
   sync: somebody must look at a meter that lost its time, and its frozen data until then is suspect.
   Raised at most once per ``min_interval_s`` per meter;
3. within ``threshold_s``: ``NONE`` (reads take time, clocks have seconds: small offsets are noise);
4. within ``freeze_guard_s`` of site-local midnight, by the true time or by the meter's: ``DEFER`` (the daily
   freeze happens at 00:00 on the meter's clock; moving the clock across it could freeze a day twice or not at
   all). DL/T 645-2007 forbids
   broadcast time sync around midnight for this reason;
5. a sync of this meter (or, for a broadcast, of this DTU) in the last ``min_interval_s`` (a day): ``NONE``.
   DL/T 645-2007 allows one broadcast time sync a day;
6. ``max_per_hour`` syncs already sent on this link (DTU, gateway, site) in the last hour: ``DEFER``;
7. otherwise ``BROADCAST`` (08H to every meter of the DTU, no password) when the transport is DL/T 645,
   broadcasting is enabled and the offset is within ``broadcast_limit_s`` (meters ignore a broadcast that moves
   their clock by more than 5 minutes); else ``SYNC`` (an addressed, password-protected write).

Invariants: a decision of ``SYNC`` or ``BROADCAST`` is counted at once (``decide`` reserves the slot), so the
limits hold even if the caller never reports back and a failed sync is retried tomorrow, never in a loop; the
memory kept is bounded (``max_tracked`` entries: the oldest sync times are forgotten first, while a link's hourly
count is never forgotten within its hour: a full table defers new links instead). Pure: no I/O, time passed in.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum

from powergate.headend.model import CommandKind, MeterCommand, MeterEndpoint, MeterSnapshot, Transport

DAY_S = 86_400
HOUR_S = 3_600


class TimeSyncAction(StrEnum):
    NONE = "none"
    """Nothing to do: no clock read, within tolerance, or synced recently enough."""
    SYNC = "sync"
    """Set this meter's clock with an addressed command (``MeterCommand`` of kind TIME_SYNC)."""
    BROADCAST = "broadcast"
    """Set the clocks of every meter on this DTU with one 08H broadcast."""
    DEFER = "defer"
    """A sync is due but not now (midnight freeze window, or the link's hourly budget is spent); ask again later."""
    ALARM = "alarm"
    """The clock is too far off to trust or to fix remotely."""


@dataclass(frozen=True, slots=True)
class TimeSyncPolicy:
    threshold_s: int = 60
    sanity_limit_s: int = DAY_S
    min_interval_s: int = DAY_S
    max_per_hour: int = 60
    """Syncs per link (DTU, gateway, site) per hour."""
    freeze_guard_s: int = 300
    broadcast: bool = True
    broadcast_limit_s: int = 300

    def __post_init__(self) -> None:
        assert 0 < self.threshold_s < self.sanity_limit_s, (self.threshold_s, self.sanity_limit_s)
        assert 0 < self.min_interval_s <= 31 * DAY_S and 0 < self.max_per_hour <= 10_000
        assert 0 <= self.freeze_guard_s < HOUR_S and self.broadcast_limit_s > 0


@dataclass(frozen=True, slots=True)
class TimeSyncDecision:
    action: TimeSyncAction
    offset_s: int
    """Meter clock minus head-end clock at the read (positive: the meter is fast)."""
    reason: str


def clock_offset_s(snapshot: MeterSnapshot, zone: dt.tzinfo) -> int | None:
    """How far the meter's clock is ahead of the head-end's at the read; ``None`` when no clock was read.

    A naive meter time (DL/T 645 carries no zone) is wall-clock time in the site's ``zone``.
    """
    meter_time = snapshot.meter_time
    if meter_time is None:
        return None
    if meter_time.tzinfo is None:
        meter_time = meter_time.replace(tzinfo=zone)
    assert snapshot.at.tzinfo is not None, "snapshot times are aware (UTC)"
    return int((meter_time - snapshot.at).total_seconds())


class TimeSyncPlanner:
    """Remembers recent syncs and alarms per meter and per link; decides with ``TimeSyncPolicy``."""

    def __init__(self, policy: TimeSyncPolicy | None = None, max_tracked: int = 200_000) -> None:
        assert 0 < max_tracked <= 10_000_000
        self.policy = policy or TimeSyncPolicy()
        self.max_tracked = max_tracked
        self._last: OrderedDict[str, dt.datetime] = OrderedDict()
        """meter / DTU / alarm key -> when it was last synced (or alarmed); oldest first."""
        self._hourly: dict[str, deque[dt.datetime]] = {}

    def decide(
        self, endpoint: MeterEndpoint, snapshot: MeterSnapshot, now: dt.datetime, zone: dt.tzinfo
    ) -> TimeSyncDecision:
        """What to do about the clock of the meter read in ``snapshot``; ``now`` is UTC, ``zone`` the site's."""
        policy = self.policy
        offset_s = clock_offset_s(snapshot, zone)
        if offset_s is None:
            return TimeSyncDecision(TimeSyncAction.NONE, 0, "no clock read")
        size_s = abs(offset_s)
        if size_s > policy.sanity_limit_s:
            return self._alarm(endpoint, offset_s, now)
        if size_s <= policy.threshold_s:
            return TimeSyncDecision(TimeSyncAction.NONE, offset_s, f"within {policy.threshold_s} s")
        meter_now = now + dt.timedelta(seconds=offset_s)
        if _near_midnight(now, zone, policy.freeze_guard_s) or _near_midnight(meter_now, zone, policy.freeze_guard_s):
            return TimeSyncDecision(TimeSyncAction.DEFER, offset_s, "inside the midnight freeze window")
        broadcast = policy.broadcast and endpoint.transport is Transport.DLT645 and size_s <= policy.broadcast_limit_s
        key = f"dtu:{endpoint.link_id}" if broadcast else f"meter:{endpoint.meter_id}"
        last = self._last.get(key)
        if last is not None and (now - last).total_seconds() < policy.min_interval_s:
            return TimeSyncDecision(TimeSyncAction.NONE, offset_s, f"synced at {last.isoformat()}, once a day at most")
        sent = self._recent(endpoint.link_id, now)
        if sent is None:
            # forgetting a busy link's count could break its hourly limit: the limit wins, the sync waits
            return TimeSyncDecision(TimeSyncAction.DEFER, offset_s, f"{self.max_tracked} links synced this hour")
        if len(sent) >= policy.max_per_hour:
            return TimeSyncDecision(
                TimeSyncAction.DEFER, offset_s, f"{len(sent)} syncs on {endpoint.link_id} this hour"
            )
        sent.append(now)
        self._remember(key, now)
        if broadcast:
            return TimeSyncDecision(TimeSyncAction.BROADCAST, offset_s, f"off by {offset_s} s: broadcast to the DTU")
        return TimeSyncDecision(TimeSyncAction.SYNC, offset_s, f"off by {offset_s} s")

    def _alarm(self, endpoint: MeterEndpoint, offset_s: int, now: dt.datetime) -> TimeSyncDecision:
        key = f"alarm:{endpoint.meter_id}"
        last = self._last.get(key)
        if last is not None and (now - last).total_seconds() < self.policy.min_interval_s:
            return TimeSyncDecision(TimeSyncAction.NONE, offset_s, "clock alarm already raised")
        self._remember(key, now)
        reason = f"clock off by {offset_s} s, beyond the sanity limit of {self.policy.sanity_limit_s} s: not synced"
        return TimeSyncDecision(TimeSyncAction.ALARM, offset_s, reason)

    def _recent(self, link_id: str, now: dt.datetime) -> deque[dt.datetime] | None:
        """The link's syncs in the last hour; ``None`` when the table is full of links active this hour."""
        sent = self._hourly.get(link_id)
        if sent is None:
            if len(self._hourly) >= self.max_tracked:
                self._forget_quiet_links(now)
                if len(self._hourly) >= self.max_tracked:
                    return None
            sent = self._hourly[link_id] = deque(maxlen=self.policy.max_per_hour)
        while sent and (now - sent[0]).total_seconds() >= HOUR_S:
            sent.popleft()
        return sent

    def _forget_quiet_links(self, now: dt.datetime) -> None:
        for link_id in [
            k for k, sent in self._hourly.items() if not sent or (now - sent[-1]).total_seconds() >= HOUR_S
        ]:
            del self._hourly[link_id]

    def _remember(self, key: str, now: dt.datetime) -> None:
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_tracked:
            self._last.popitem(last=False)

    @staticmethod
    def command(command_id: str, now: dt.datetime, valid_s: int = 300) -> MeterCommand:
        """The addressed TIME_SYNC command for a ``SYNC`` decision: set the clock to the head-end's ``now``.

        Valid for ``valid_s`` only: a sync delivered late would set a stale time.
        """
        assert now.tzinfo is not None and 0 < valid_s <= HOUR_S
        return MeterCommand(command_id, CommandKind.TIME_SYNC, now + dt.timedelta(seconds=valid_s), at=now)


def _near_midnight(now: dt.datetime, zone: dt.tzinfo, guard_s: int) -> bool:
    local = now.astimezone(zone)
    second_of_day = local.hour * HOUR_S + local.minute * 60 + local.second
    return second_of_day < guard_s or second_of_day >= DAY_S - guard_s
