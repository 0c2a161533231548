"""Read scheduling: every meter read once per interval, spread evenly, results to a sink in batches.

Each meter's read time within the interval is a stable hash of its id (``slot_offset_s``): the same meter is
read at the same second of every interval, in every process, and a fleet's reads are spread evenly over the
interval instead of all firing at :00 (no thundering herd on DTUs, broker or database). Slots are aligned on
multiples of the interval since the epoch.

What it keeps (per meter a ``__slots__`` record; no task per meter):
- scheduled reads (``interval_s``) queued per link (transport + DTU / gateway / site) and carried out by at
  most ``per_link`` concurrent reads per link (1 for an RS485 bus) and ``max_in_flight`` overall; a meter is
  queued at most once, so a slow bus coalesces slots instead of piling up reads;
- on-demand reads (``read_now``) go ahead of scheduled ones on their link, bounded by ``max_on_demand``;
- the daily frozen-data read: the first read after 00:00 site-local (plus ``frozen_after``) also reads the
  meter's daily freeze; a meter that was offline then gets it on its first successful read afterwards, which
  is the backfill of the midnight reading from the meter's own frozen data. The day counts as read only when
  the freeze is today's: a meter whose clock is behind (or that has no freeze yet) is asked again at each
  read until ``frozen_grace`` has passed, then the day is given up (meters that cannot freeze cost an extra
  request a read for that long only);
- backfill of several days: a meter that was away over several midnights has the older freezes read too
  ("last 2" .. "last n", at most ``max_backfill_days``), through links that offer ``read_frozen``
  (``FrozenHistory``; DL/T 645), each delivered as a snapshot with only the frozen fields; a backfill cut
  off by a lost reply is done again at the next read (reading ids make the repeat harmless);
- gap detection: a successful read more than ``gap_after_s`` after the previous one is a gap (the meter was
  offline or missed reads); it is counted and reported to ``on_gap``;
- retries: a read that timed out or was garbled is retried at most ``max_retries`` times (at the back of its
  link's queue); an offline or busy link is not hammered: the next slot tries again;
- results go to ``sink`` in batches of at most ``batch_size`` or after ``batch_wait_s``, through a bounded
  queue (a slow sink slows the readers down; nothing grows without bound);
- the counts behind the acceptance metric: ``stats.scheduled`` slots that came due and ``stats.collected``
  slots whose read succeeded.

``snapshot_readings`` turns snapshots into ``domain.rating.Reading``s with ids that make ingest idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import heapq
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable
from zoneinfo import ZoneInfo

from powergate.domain.rating import Reading
from powergate.headend.model import FailureKind, LinkError, MeterEndpoint, MeterLink, MeterSnapshot, ReadItem, Transport

Sink = Callable[[Sequence[MeterSnapshot]], Awaitable[None]]
Outcome = MeterSnapshot | LinkError
Clock = Callable[[], dt.datetime]
_T = TypeVar("_T")

DEFAULT_ITEMS = frozenset({ReadItem.ENERGY})
DEFAULT_PER_LINK = {Transport.DLT645: 1, Transport.MODBUS: 1, Transport.MQTT: 64}
MAX_METERS = 1_000_000
MAX_TICK_S = 0.5
"""The scheduling loop looks at the clock at least this often."""
SINK_RETRIES = 3
SITE_TZ = ZoneInfo("Asia/Shanghai")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def slot_offset_s(meter_id: str, interval_s: float) -> float:
    """Where in each interval ``meter_id`` is read: a stable hash (not ``hash()``, which changes per process)."""
    digest = int.from_bytes(hashlib.blake2b(meter_id.encode(), digest_size=8).digest(), "big")
    return digest / 2**64 * interval_s


def first_due_s(meter_id: str, interval_s: float, now_s: float) -> float:
    """The meter's first slot at or after ``now_s``."""
    offset = slot_offset_s(meter_id, interval_s)
    return math.ceil((now_s - offset) / interval_s) * interval_s + offset


def frozen_read_due(last_frozen: dt.date | None, now: dt.datetime, tz: dt.tzinfo, frozen_after: dt.timedelta) -> bool:
    """Whether a read at ``now`` should also read the daily freeze (not yet read for today's local date)."""
    local = (now.astimezone(tz) - frozen_after).date()
    return last_frozen is None or last_frozen < local


@runtime_checkable
class FrozenHistory(Protocol):
    """A link that can read older daily freezes than the last one (for backfill over several days)."""

    async def read_frozen(self, endpoint: MeterEndpoint, last: int) -> MeterSnapshot | LinkError: ...


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    interval_s: float = 900.0
    items: frozenset[ReadItem] = DEFAULT_ITEMS
    tz: dt.tzinfo = SITE_TZ
    frozen_read: bool = True
    frozen_after: dt.timedelta = dt.timedelta(minutes=5)
    """Meters freeze at their own 00:00; their clocks drift, so wait a little after the site's midnight."""
    frozen_grace: dt.timedelta = dt.timedelta(hours=2)
    """After ``frozen_after``, how long a missing or older-than-today freeze is asked for again at each read."""
    max_backfill_days: int = 31
    """At most this many daily freezes are read after an outage (DL/T 645 meters keep 62)."""
    per_link: Mapping[Transport, int] | None = None
    max_in_flight: int = 2048
    max_on_demand: int = 1024
    max_retries: int = 2
    read_timeout_s: float = 30.0
    """A bound around one ``MeterLink.read`` (which has its own per-request timeouts)."""
    gap_after_s: float | None = None
    """A gap is a successful read this long after the previous one; default 2.5 intervals."""
    batch_size: int = 500
    batch_wait_s: float = 1.0
    max_buffered: int = 20_000

    def check(self) -> str | None:
        if self.interval_s <= 0:
            return f"interval_s: {self.interval_s} must be positive"
        if not (0 < self.batch_size <= self.max_buffered):
            return f"batch_size: {self.batch_size} must be in 1..max_buffered ({self.max_buffered})"
        if self.max_in_flight <= 0 or self.max_on_demand <= 0 or self.max_retries < 0:
            return "max_in_flight, max_on_demand: must be positive; max_retries: not negative"
        if not 1 <= self.max_backfill_days <= 62:
            return f"max_backfill_days: {self.max_backfill_days} must be in 1..62"
        return None


@dataclass(slots=True)
class ScheduleStats:
    scheduled: int = 0
    """Slots that came due."""
    collected: int = 0
    """Slots whose read succeeded."""
    coalesced: int = 0
    """Slots that came due while the meter's previous read was still queued."""
    failed: int = 0
    cancelled: int = 0
    """Queued slots dropped because the scheduler was stopped (not counted as scheduled)."""
    retries: int = 0
    on_demand: int = 0
    frozen_reads: int = 0
    stale_freezes: int = 0
    """Frozen reads that found no freeze of today yet (meter clock behind, or no freeze): asked again."""
    backfilled: int = 0
    """Older daily freezes read after an outage over several midnights."""
    gaps: int = 0
    delivered: int = 0
    """Snapshots handed to the sink."""
    sink_errors: int = 0
    dropped: int = 0
    """Snapshots given up after the sink failed ``SINK_RETRIES`` times."""

    @property
    def collected_ratio(self) -> float:
        return self.collected / self.scheduled if self.scheduled else 1.0


class _Meter:
    """One meter's scheduling state; kept small (it exists for every meter)."""

    __slots__ = ("due_s", "endpoint", "frozen_day", "last_ok_s", "queued", "retries")

    def __init__(self, endpoint: MeterEndpoint, due_s: float, frozen_day: dt.date | None) -> None:
        self.endpoint = endpoint
        self.due_s = due_s
        self.frozen_day = frozen_day
        self.last_ok_s: float | None = None
        self.queued = False
        self.retries = 0


@dataclass(slots=True)
class _OnDemand:
    endpoint: MeterEndpoint
    items: frozenset[ReadItem]
    future: asyncio.Future[Outcome]


_LinkKey = tuple[Transport, str]


class ReadScheduler:
    """Reads every added meter once per interval through ``links[endpoint.transport]``; see the module doc."""

    def __init__(
        self,
        links: Mapping[Transport, MeterLink],
        sink: Sink,
        config: ScheduleConfig | None = None,
        *,
        clock: Clock = _utc_now,
        on_outcome: Callable[[MeterEndpoint, Outcome], None] | None = None,
        on_gap: Callable[[str, dt.datetime, dt.datetime], None] | None = None,
    ) -> None:
        self.config = config or ScheduleConfig()
        problem = self.config.check()
        assert problem is None, problem
        self.links = links
        self.sink = sink
        self.clock = clock
        self.on_outcome = on_outcome
        self.on_gap = on_gap
        self.per_link = {**DEFAULT_PER_LINK, **(self.config.per_link or {})}
        self._history = {transport: link for transport, link in links.items() if isinstance(link, FrozenHistory)}
        self.gap_after_s = self.config.gap_after_s or 2.5 * self.config.interval_s
        self.stats = ScheduleStats()
        self._meters: dict[str, _Meter] = {}
        self._heap: list[tuple[float, str]] = []
        self._pending: dict[_LinkKey, deque[str]] = {}
        self._urgent: dict[_LinkKey, deque[_OnDemand]] = {}
        self._drainers: dict[_LinkKey, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_demand = 0
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._results: asyncio.Queue[MeterSnapshot] = asyncio.Queue(self.config.max_buffered)

    # -- meters ---------------------------------------------------------------------------------------------

    def add(self, endpoint: MeterEndpoint, frozen_day: dt.date | None = None) -> None:
        """Read ``endpoint`` from its next slot on; ``frozen_day``: the local date of its last frozen read."""
        assert endpoint.transport in self.links, endpoint
        assert len(self._meters) < MAX_METERS or endpoint.meter_id in self._meters
        due = first_due_s(endpoint.meter_id, self.config.interval_s, self.clock().timestamp())
        self._meters[endpoint.meter_id] = _Meter(endpoint, due, frozen_day)
        heapq.heappush(self._heap, (due, endpoint.meter_id))

    def remove(self, meter_id: str) -> None:
        self._meters.pop(meter_id, None)  # its heap and queue entries are skipped when they come up

    def __len__(self) -> int:
        return len(self._meters)

    # -- scheduling -----------------------------------------------------------------------------------------

    def tick(self, now: dt.datetime | None = None) -> int:
        """Queue every slot due at ``now``; returns how many came due. The loop calls it; tests may too."""
        now_s = (now or self.clock()).timestamp()
        interval = self.config.interval_s
        came_due = 0
        while self._heap and self._heap[0][0] <= now_s:
            due, meter_id = heapq.heappop(self._heap)
            meter = self._meters.get(meter_id)
            if meter is None or meter.due_s != due:
                continue
            came_due += 1
            self.stats.scheduled += 1
            meter.due_s = due + interval
            heapq.heappush(self._heap, (meter.due_s, meter_id))
            if meter.queued:
                self.stats.coalesced += 1
                continue
            meter.queued = True
            self._enqueue(meter.endpoint, self._pending, meter_id)
        return came_due

    def next_due_s(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def _enqueue(self, endpoint: MeterEndpoint, queues: dict[_LinkKey, deque[_T]], job: _T) -> None:
        key = (endpoint.transport, endpoint.link_id)
        queue = queues.get(key)
        if queue is None:
            queue = queues[key] = deque()
        queue.append(job)
        if self._drainers.get(key, 0) < self.per_link[endpoint.transport]:
            self._drainers[key] = self._drainers.get(key, 0) + 1
            self._spawn(self._drain(key))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def read_now(
        self, endpoint: MeterEndpoint, items: frozenset[ReadItem] | None = None
    ) -> MeterSnapshot | LinkError:
        """An on-demand read, ahead of the scheduled ones on its link; the snapshot also goes to the sink."""
        if endpoint.transport not in self.links:
            return LinkError(FailureKind.OFFLINE, f"no link for transport {endpoint.transport}")
        if self._on_demand >= self.config.max_on_demand:
            return LinkError(FailureKind.BUSY, f"{self._on_demand} on-demand reads waiting")
        self.stats.on_demand += 1
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._on_demand += 1
        try:
            self._enqueue(endpoint, self._urgent, _OnDemand(endpoint, items or self.config.items, future))
            return await future
        finally:
            self._on_demand -= 1

    # -- reading --------------------------------------------------------------------------------------------

    async def _drain(self, key: _LinkKey) -> None:
        """Work through one link's queues (on-demand first); as many of these per link as ``per_link``."""
        try:
            while True:
                urgent, pending = self._urgent.get(key), self._pending.get(key)
                if urgent:
                    job = urgent.popleft()
                    async with self._slots:
                        outcome = await self._read(job.endpoint, job.items)
                    if not job.future.done():
                        job.future.set_result(outcome)
                elif pending:
                    meter = self._meters.get(pending.popleft())
                    if meter is not None:
                        async with self._slots:
                            await self._scheduled_read(meter)
                else:
                    return
        finally:
            self._drainers[key] -= 1
            if not self._drainers[key]:
                del self._drainers[key]
                self._urgent.pop(key, None)
                self._pending.pop(key, None)

    async def _read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> Outcome:
        link = self.links[endpoint.transport]
        try:
            async with asyncio.timeout(self.config.read_timeout_s):
                outcome = await link.read(endpoint, items)
        except TimeoutError:
            outcome = LinkError(
                FailureKind.TIMEOUT, f"meter {endpoint.meter_id}: read took over {self.config.read_timeout_s} s"
            )
        if self.on_outcome is not None:
            self.on_outcome(endpoint, outcome)
        if isinstance(outcome, MeterSnapshot):
            await self._results.put(outcome)
        return outcome

    async def _scheduled_read(self, meter: _Meter) -> None:
        config = self.config
        now = self.clock()
        items = config.items
        frozen = config.frozen_read and frozen_read_due(meter.frozen_day, now, config.tz, config.frozen_after)
        if frozen:
            items = items | {ReadItem.FROZEN_DAY}
        outcome = await self._read(meter.endpoint, items)
        if isinstance(outcome, LinkError):
            retry = outcome.kind in (FailureKind.TIMEOUT, FailureKind.GARBLED) and meter.retries < config.max_retries
            if retry and meter.endpoint.meter_id in self._meters:
                meter.retries += 1
                self.stats.retries += 1
                self._enqueue(meter.endpoint, self._pending, meter.endpoint.meter_id)
                return
            self.stats.failed += 1
        else:
            self.stats.collected += 1
            self._check_gap(meter, outcome.at)
            if frozen:
                self.stats.frozen_reads += 1
                await self._after_frozen_read(meter, outcome, now)
        meter.queued = False
        meter.retries = 0

    async def _after_frozen_read(self, meter: _Meter, snapshot: MeterSnapshot, now: dt.datetime) -> None:
        """Mark today's freeze read if it is today's; read the older ones a meter away for days still has."""
        config = self.config
        local = now.astimezone(config.tz) - config.frozen_after
        today = local.date()
        frozen_at = snapshot.frozen_at
        if frozen_at is None or frozen_at.astimezone(config.tz).date() < today:
            # the meter has not frozen today by its own clock (it is behind) or has no freeze: ask again
            self.stats.stale_freezes += 1
            if local - local.replace(hour=0, minute=0, second=0, microsecond=0) < config.frozen_grace:
                return
        previous = meter.frozen_day
        meter.frozen_day = today
        missed_days = (today - previous).days if previous is not None and frozen_at is not None else 1
        if missed_days > 1 and not await self._backfill(meter.endpoint, min(missed_days, config.max_backfill_days)):
            meter.frozen_day = previous  # cut off: the next read reads today's freeze and the backfill again

    async def _backfill(self, endpoint: MeterEndpoint, days: int) -> bool:
        """Freezes "last 2" .. "last ``days``" as frozen-only snapshots; ``False`` if cut off (try again)."""
        link = self._history.get(endpoint.transport)
        if link is None:
            return True  # the transport reads only the last freeze: the older days stay with the meter
        for last in range(2, days + 1):
            try:
                async with asyncio.timeout(self.config.read_timeout_s):
                    outcome = await link.read_frozen(endpoint, last)
            except TimeoutError:
                return False
            if isinstance(outcome, LinkError):
                # a meter that refuses an older freeze does not have it: that is the end of its history
                return outcome.kind is FailureKind.REJECTED
            if outcome.frozen_at is None:
                return True  # the meter keeps no older freeze
            self.stats.backfilled += 1
            await self._results.put(outcome)
        return True

    def _check_gap(self, meter: _Meter, at: dt.datetime) -> None:
        at_s = at.timestamp()
        last = meter.last_ok_s
        meter.last_ok_s = at_s
        if last is not None and at_s - last > self.gap_after_s:
            self.stats.gaps += 1
            if self.on_gap is not None:
                self.on_gap(meter.endpoint.meter_id, dt.datetime.fromtimestamp(last, dt.UTC), at)

    # -- delivery -------------------------------------------------------------------------------------------

    async def _deliver(self, stop: asyncio.Event) -> None:
        """Batches from the results queue to the sink: at most ``batch_size``, at most ``batch_wait_s`` old.

        Runs until ``stop`` is set and the queue is empty: it is never cancelled, so no batch is lost half-built
        and no sink call is cut off half-way.
        """
        config = self.config
        while not (stop.is_set() and self._results.empty()):
            batch: list[MeterSnapshot] = []
            deadline = time.monotonic() + config.batch_wait_s
            while len(batch) < config.batch_size:
                if not self._results.empty():
                    batch.append(self._results.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        batch.append(await self._results.get())
            if batch:
                await self._hand_over(batch)

    async def _hand_over(self, batch: list[MeterSnapshot]) -> None:
        for attempt in range(1, SINK_RETRIES + 1):
            try:
                await self.sink(batch)
                self.stats.delivered += len(batch)
                return
            except Exception:  # the sink is someone else's code (a database): keep reading, try again
                self.stats.sink_errors += 1
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
        # registers are cumulative: the next reading of these meters covers what these would have billed
        self.stats.dropped += len(batch)

    async def settle(self) -> None:
        """Wait until every queued read is done (tests driving ``tick`` by hand; shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def flush(self) -> None:
        """Hand everything read so far to the sink now."""
        batch: list[MeterSnapshot] = []
        while not self._results.empty():
            batch.append(self._results.get_nowait())
            if len(batch) >= self.config.batch_size:
                await self._hand_over(batch)
                batch = []
        if batch:
            await self._hand_over(batch)

    # -- the loop -------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Schedule and deliver until ``stop`` is set; then finish the reads in flight and flush."""
        delivered = asyncio.Event()
        deliverer = asyncio.create_task(self._deliver(delivered))
        try:
            while not stop.is_set():
                self.tick()
                upcoming = self.next_due_s()
                wait_s = MAX_TICK_S if upcoming is None else upcoming - self.clock().timestamp()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(max(wait_s, 0.001), MAX_TICK_S)):
                        await stop.wait()
        finally:
            for queue in self._pending.values():
                # slots cut off by the shutdown are not missed reads: counted apart, out of the ratio
                self.stats.cancelled += len(queue)
                self.stats.scheduled -= len(queue)
                queue.clear()
            await self.settle()
            delivered.set()
            await deliverer


def snapshot_readings(snapshots: Sequence[MeterSnapshot]) -> list[Reading]:
    """Readings for ingest: the registers read now, and the daily freeze when one was read.

    Ids: ``<meter>@<unix seconds>`` and ``<meter>@frozen@<unix seconds of the freeze>``: reading the same
    freeze again (a retry, a restart) gives the same id, which ingest stores once.
    """
    readings: list[Reading] = []
    for snapshot in snapshots:
        if snapshot.frozen_at is not None and snapshot.frozen_total_wh is not None:
            frozen_id = f"{snapshot.meter_id}@frozen@{int(snapshot.frozen_at.timestamp())}"
            readings.append(
                Reading(
                    frozen_id, snapshot.meter_id, snapshot.frozen_at, snapshot.frozen_total_wh, snapshot.frozen_bands_wh
                )
            )
        if snapshot.total_wh is not None:
            reading_id = f"{snapshot.meter_id}@{int(snapshot.at.timestamp())}"
            readings.append(Reading(reading_id, snapshot.meter_id, snapshot.at, snapshot.total_wh, snapshot.bands_wh))
    return readings
