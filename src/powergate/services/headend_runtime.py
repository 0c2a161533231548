"""The head-end process: transports, read scheduling, ingest, status and the command dispatcher, wired together.

This is the composition root of the ``headend`` role (``powergate headend run``). It keeps what the head-end
learns flowing into the database in batches, through the store layer:

- readings: scheduler (or MQTT push) -> ``snapshot_readings`` -> ``Ingestor.ingest`` (rating and the ledger, one
  transaction per batch; run in a worker thread so the event loop keeps serving meters); in queue mode
  (``HeadendSettings.ingest``) each batch is instead one row of the ingest queue that the workers rate and book
  (``services.ingest_queue``);
- status: every read outcome feeds a ``StatusTracker``; its changes are written every ``status_every_s``;
- events pushed by MQTT meters: stored once each (``record_events``);
- prepaid control: ingest evaluates the balance policy in each batch's transaction (``prepaid.after_ingest``);
  every ``prepaid_every_s`` the outbox relay turns trip / close decisions (also those a payment queued in its
  own transaction, in any process) into commands and wakes the dispatcher at once, and every
  ``due_trips_every_s`` trips deferred to the end of a friendly window are re-decided;
- commands: a ``Dispatcher`` delivers the persisted command queue through a ``LinkRouter``; it is woken when a
  DTU registers, so a meter that comes back gets its pending command at once, and when any process queues a
  command (``store.wakeup``); with several head-ends it takes the commands of the DTUs connected to it even when
  another head-end put them off as offline (``reachable_links``).

Meters and how to reach them come from ``meter_endpoints`` (``powergate headend endpoint add``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from powergate.domain.notifications import Channel
from powergate.domain.rating import Reading
from powergate.headend import commands as queue
from powergate.headend import status as status_store
from powergate.headend.commands import Dispatcher, DispatchOptions
from powergate.headend.dlt645_link import Dlt645Link
from powergate.headend.dtu import DtuServer
from powergate.headend.modbus_link import ModbusLink
from powergate.headend.model import MeterEndpoint, MeterLink, MeterSnapshot, Transport
from powergate.headend.mqtt_link import MeterEvent as PushedEvent
from powergate.headend.mqtt_link import MqttLink, Notice
from powergate.headend.router import LinkRouter
from powergate.headend.scheduler import ReadScheduler, ScheduleConfig, snapshot_readings
from powergate.headend.status import StatusTracker
from powergate.headend.timesync import TimeSyncAction, TimeSyncPlanner
from powergate.protocols import mqtt as mqtt_protocol
from powergate.services import ingest_queue, meterside, notify, prepaid, samples
from powergate.services.ingest import Ingestor, IngestReport
from powergate.store import wakeup

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
SAMPLES_PRUNE_EVERY = dt.timedelta(hours=1)
INGEST_MODES = ("direct", "queue")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class HeadendSettings:
    name: str = "headend-1"
    """Identifies this process's command claims; unique per live head-end process, kept across restarts."""
    dtu_listen: tuple[str, int] | None = ("0.0.0.0", 7100)
    mqtt_broker: tuple[str, int] | None = None
    mqtt_group: str = "headend"
    mqtt_batch_wait_s: float = 0.25
    """Longest wait to gather pushed readings into one ingest transaction. Each transaction costs a fixed ~20
    statements (locks, the meters' rows, the balance policy's reads): at 0.05 s a head-end taking 550 readings/s
    wrote batches of ~30; at 0.25 s, of ~140, for less CPU per reading (docs/benchmarks.md), and a reading is
    booked at most this much later. Under a flood, batches grow by themselves whatever the wait."""
    modbus: bool = False
    """Read meters behind Modbus TCP / RTU-over-TCP gateways (endpoints with transport ``modbus``)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    request_timeout_s: float = 2.0
    status_every_s: float = 10.0
    offline_after_s: float = 3 * 900.0
    dispatch: DispatchOptions = field(default_factory=DispatchOptions)
    notify_channels: Mapping[str, Channel] | None = None
    """Notification channels; with them this process also delivers notifications (queued by the outbox relay)."""
    notify_every_s: float = 1.0
    prepaid_every_s: float = 0.1
    """Outbox relay poll: bounds the delay from a payment's commit to its close command (one indexed query)."""
    due_trips_every_s: float = 10.0
    ingest: str = "direct"
    """``direct``: rate and book each batch here; ``queue``: write it to ``ingest_batches`` for the workers
    (``services.ingest_queue``), keeping this process light. Samples, status, the meter-side mirror and clock
    sync stay here either way."""

    def __post_init__(self) -> None:
        assert self.ingest in INGEST_MODES, f"ingest must be one of {INGEST_MODES}, got {self.ingest!r}"


@dataclass(slots=True)
class RuntimeStats:
    batches: int = 0
    readings: int = 0
    rated: int = 0
    quarantined: int = 0
    rejected: int = 0
    events: int = 0
    status_writes: int = 0
    alarms: int = 0
    notifications: int = 0
    time_syncs: int = 0
    relayed: int = 0
    relay_problems: int = 0
    samples: int = 0
    queued: int = 0
    """Batches written to the ingest queue (queue mode)."""
    busy: int = 0
    """Readings whose meter another head-end was rating at that moment: ingested right after the batch."""


class HeadendRuntime:
    def __init__(
        self, engine: Engine, settings: HeadendSettings, ingestor: Ingestor | None = None, clock: Clock = utc_now
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.ingestor = ingestor or Ingestor(engine, clock=clock, after_post=prepaid.after_ingest)
        self.stats = RuntimeStats()
        self.status = StatusTracker(offline_after_s=settings.offline_after_s, clock=clock)
        self.endpoints: dict[str, MeterEndpoint] = {}
        self.dtu_server: DtuServer | None = None
        self.mqtt: MqttLink | None = None
        self.dispatcher: Dispatcher | None = None
        self.dtu_port: int | None = None
        self.ready = asyncio.Event()
        self._ingest_lock = asyncio.Lock()
        self.timesync = TimeSyncPlanner()
        self._samples_pruned_at = dt.datetime.min.replace(tzinfo=dt.UTC)

    def load_endpoints(self) -> list[MeterEndpoint]:
        with self.engine.connect() as conn:
            endpoints = status_store.load_endpoints(conn)
        self.endpoints = {e.meter_id: e for e in endpoints}
        return endpoints

    async def run(self, stop: asyncio.Event) -> None:
        endpoints = self.load_endpoints()
        links: dict[Transport, MeterLink] = {}
        tasks: list[asyncio.Task[None]] = []
        if self.settings.dtu_listen is not None:
            self.dtu_server = DtuServer(request_timeout_s=self.settings.request_timeout_s, listener=self._dtu_changed)
            host, port = self.settings.dtu_listen
            self.dtu_port = await self.dtu_server.start(host, port)
            links[Transport.DLT645] = Dlt645Link(self.dtu_server, tz=self.settings.schedule.tz, clock=self.clock)
        if self.settings.mqtt_broker is not None:
            host, port = self.settings.mqtt_broker
            mqtt_endpoints = [e for e in endpoints if e.transport is Transport.MQTT]
            self.mqtt = MqttLink(
                host,
                port,
                group=self.settings.mqtt_group,
                # only the sites of our meters: on a broker shared with other sites, subscribing to every site
                # would bring their retained statuses (thousands, twice) on every connect, crowding our readings
                sites=mqtt_sites(mqtt_endpoints),
                reading_sink=self._on_readings,
                notice_sink=self._on_notices,
                clock=self.clock,
                batch_wait_s=self.settings.mqtt_batch_wait_s,
                known_only=True,  # a shared broker carries other sites' meters: dropped (counted) by the link
            )
            self.mqtt.register(mqtt_endpoints)
            links[Transport.MQTT] = self.mqtt
            tasks.append(asyncio.create_task(self.mqtt.run(stop)))
        modbus: ModbusLink | None = None
        if self.settings.modbus:
            modbus = ModbusLink(clock=self.clock, timeout_s=self.settings.request_timeout_s)
            links[Transport.MODBUS] = modbus
        scheduler = ReadScheduler(
            links, self._on_readings, self.settings.schedule, clock=self.clock, on_outcome=self.status.observe
        )
        for endpoint in endpoints:
            if endpoint.transport in links and endpoint.transport is not Transport.MQTT:
                scheduler.add(endpoint)  # MQTT meters push their readings; they are not polled
        self.dispatcher = Dispatcher(
            self.engine,
            LinkRouter(links),
            self.endpoints.get,
            name=self.settings.name,
            clock=self.clock,
            options=self.settings.dispatch,
        )
        tasks.append(asyncio.create_task(scheduler.run(stop)))
        if self.dtu_server is not None:  # a DTU may dial into any head-end: take its commands where it is
            self.dispatcher.reachable_links = self._online_dtus
        tasks.append(asyncio.create_task(self.dispatcher.run(stop)))
        # a command queued by any process (a payment's close via a worker's relay) wakes the dispatcher at once
        tasks.append(asyncio.create_task(wakeup.forward(self.engine, wakeup.COMMANDS, self.dispatcher.wake, stop)))
        tasks.append(asyncio.create_task(self._write_status_every(stop)))
        if self.settings.notify_channels:
            worker = notify.DeliveryWorker(
                self.engine, self.settings.notify_channels, self.clock, worker_id=f"{self.settings.name}-notify"
            )
            tasks.append(asyncio.create_task(self._deliver_every(worker, stop)))
        tasks.append(asyncio.create_task(self._relay_prepaid_every(stop)))
        self.ready.set()
        log.info("head-end %s: %d meters, links %s", self.settings.name, len(endpoints), sorted(links))
        try:
            await stop.wait()
            await asyncio.gather(*tasks, return_exceptions=False)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            await self._flush_status()
            if self.dtu_server is not None:
                await self.dtu_server.close()
            if modbus is not None:
                await modbus.close()

    def _online_dtus(self) -> list[str]:
        server = self.dtu_server
        return [] if server is None else [dtu_id for dtu_id in list(server.sessions) if server.online(dtu_id)]

    def _dtu_changed(self, dtu_id: str, online: bool) -> None:
        if online and self.dispatcher is not None:
            self.dispatcher.wake()  # pending commands for meters behind this DTU go out now

    async def _on_readings(self, batch: Sequence[MeterSnapshot]) -> None:
        for snapshot in batch:  # pushed (MQTT) readings keep status too; polled ones were observed already
            endpoint = self.endpoints.get(snapshot.meter_id)
            if endpoint is not None:
                self.status.observe(endpoint, snapshot)
        # only meters this head-end knows: a shared broker also carries other sites' meters, whose samples would
        # break the batch's foreign keys (their readings are still offered to ingest, which rejects them by name)
        known = [snapshot for snapshot in batch if snapshot.meter_id in self.endpoints]
        readings = snapshot_readings(batch)
        direct = self.settings.ingest != "queue" and bool(readings)
        if not direct:  # direct ingest stores samples, readings and the mirror in one transaction (_write_direct)
            stored = await asyncio.to_thread(_retrying, "samples", samples.store_snapshots, self.engine, known)
            self._count_samples(*stored)
        if not readings:
            return
        async with self._ingest_lock:  # one writer per process: batches are ingested in order
            report: IngestReport | None = None
            if self.settings.ingest == "queue":  # the workers rate and book it (services.ingest_queue)
                queued = await asyncio.to_thread(
                    _retrying, "enqueue", ingest_queue.enqueue_batch, self.engine, self.settings.name, readings,
                    self.clock(),
                )  # fmt: skip
                self.stats.queued += len(queued)
            else:
                report = await asyncio.to_thread(_retrying, "ingest", self._write_direct, known, readings)
                if report.busy:  # meters another head-end was rating: now that ours is committed, wait for them
                    self.stats.busy += len(report.busy)
                    report.absorb(await asyncio.to_thread(_retrying, "ingest", self.ingestor.ingest, report.busy))
            if not direct and any(snapshot.purchase_count is not None for snapshot in batch):
                await asyncio.to_thread(self._mirror, batch)
        await self._sync_clocks(batch)
        self.stats.batches += 1
        self.stats.readings += len(readings)
        if report is None:
            return
        self.stats.rated += report.rated
        self.stats.quarantined += report.quarantined
        self.stats.rejected += len(report.rejected)
        for reading_id, reason in report.rejected:
            log.warning("reading %s rejected: %s", reading_id, reason)

    async def _sync_clocks(self, batch: Sequence[MeterSnapshot]) -> None:
        """Meters whose clock was read: a TIME_SYNC command where the policy says so (at most once a day each)."""
        now = self.clock()
        due: list[tuple[str, str]] = []
        for snapshot in batch:
            endpoint = self.endpoints.get(snapshot.meter_id)
            if snapshot.meter_time is None or endpoint is None:
                continue
            decision = self.timesync.decide(endpoint, snapshot, now, self.settings.schedule.tz)
            if decision.action in (TimeSyncAction.SYNC, TimeSyncAction.BROADCAST):
                due.append((endpoint.meter_id, decision.reason))
            elif decision.action is TimeSyncAction.ALARM:
                log.warning("meter %s clock: %s", endpoint.meter_id, decision.reason)
        if not due:
            return

        def enqueue() -> None:
            day = now.astimezone(self.settings.schedule.tz).date().isoformat()
            with self.engine.begin() as conn:
                for meter_id, reason in due:
                    command = TimeSyncPlanner.command(f"timesync:{meter_id}:{day}", now)
                    queue.enqueue(conn, meter_id, command, requested_by=self.settings.name, reason=reason, now=now)

        await asyncio.to_thread(enqueue)
        self.stats.time_syncs += len(due)
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def _write_direct(self, known: Sequence[MeterSnapshot], readings: Sequence[Reading]) -> IngestReport:
        """One transaction for a batch: its samples, its readings rated and booked, the meter-side mirror.

        One commit per batch instead of three: under load the link hands over large batches (``MqttLink``
        accumulates while the previous one is written), and each costs a fixed number of round trips.
        """
        now, started = self.clock(), time.perf_counter()
        with self.engine.begin() as conn:
            stored, bad_samples = 0, list[samples.RejectedSample]()
            batch_samples = samples.from_snapshots(known)
            for start in range(0, len(batch_samples), samples.MAX_BATCH):
                count, problems = samples.store(conn, batch_samples[start : start + samples.MAX_BATCH])
                stored, bad_samples = stored + count, bad_samples + problems
            report = self.ingestor.ingest_in(conn, readings, skip_busy=True)
            alarms = meterside.mirror(conn, known, now) if any(s.purchase_count is not None for s in known) else []
        log.debug("batch of %d readings written in %.3f s", len(readings), time.perf_counter() - started)
        self._count_samples(stored, bad_samples)
        self._count_alarms(alarms)
        return report

    def _count_samples(self, stored: int, bad_samples: Sequence[samples.RejectedSample]) -> None:
        self.stats.samples += stored
        for problem in bad_samples:
            log.warning("sample of %s at %s rejected: %s", problem.meter_id, problem.at, problem.reason)

    def _count_alarms(self, alarms: Sequence[meterside.Alarm]) -> None:
        self.stats.alarms += len(alarms)
        for alarm in alarms:
            log.warning("reconciliation alarm %s %s: %s", alarm.subject, alarm.kind, alarm.message)

    def _mirror(self, batch: Sequence[MeterSnapshot]) -> None:
        """Meter-side meters: store what they report of their balance; mismatches become alarms."""
        now = self.clock()
        with self.engine.begin() as conn:
            alarms = meterside.mirror(conn, batch, now)
        self._count_alarms(alarms)

    async def _on_notices(self, notices: Sequence[Notice]) -> None:
        events = [
            status_store.MeterEvent(n.meter_id, n.type, n.at, n.detail or "")
            for n in notices
            if isinstance(n, PushedEvent)
        ]
        if not events:
            return
        now = self.clock()

        def write() -> int:
            with self.engine.begin() as conn:
                stored, rejected = status_store.record_events(conn, events, now)
            for problem in rejected:
                log.warning("event rejected: %s", problem)
            return stored

        self.stats.events += await asyncio.to_thread(write)

    async def _relay_prepaid_every(self, stop: asyncio.Event) -> None:
        due_at = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if loop.time() >= due_at:
                due_at = loop.time() + self.settings.due_trips_every_s
                await asyncio.to_thread(prepaid.due_trips, self.engine, self.clock())
            relayed = await asyncio.to_thread(prepaid.process_outbox, self.engine, self.clock())
            self.stats.relayed += relayed.commands
            self.stats.relay_problems += len(relayed.problems)
            for problem in relayed.problems:
                log.warning("outbox: %s", problem)
            if relayed.commands and self.dispatcher is not None:
                self.dispatcher.wake()  # a close after a payment goes out now, not at the next poll
            if relayed.rows < prepaid.DEFAULT_RELAY_BATCH:  # a full batch: more may be waiting, go again at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.prepaid_every_s)

    async def _deliver_every(self, worker: notify.DeliveryWorker, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await worker.run_until_idle(max_rounds=10)
                self.stats.notifications += sent.sent
            except Exception:  # one bad round must not stop delivery; it is retried next round
                log.exception("notification delivery round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.notify_every_s)

    async def _write_status_every(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.status_every_s)
            await self._flush_status()
            if self.clock() >= self._samples_pruned_at + SAMPLES_PRUNE_EVERY:
                self._samples_pruned_at = self.clock()
                await asyncio.to_thread(samples.prune, self.engine, self._samples_pruned_at)

    async def _flush_status(self) -> None:
        rows = self.status.changes()
        if not rows:
            return
        now = self.clock()

        def write() -> None:
            with self.engine.begin() as conn:
                status_store.write_status(conn, rows, now)

        await asyncio.to_thread(write)
        self.stats.status_writes += len(rows)


T = TypeVar("T")
WRITE_ATTEMPTS = 8
"""Attempts at a batch's write when the database fails transiently (waits from 0.05 s, doubling up to 2 s, with
jitter: about 5 s in all; meanwhile the link keeps gathering the next batch)."""
MAX_WRITE_DELAY_S = 2.0


def _retrying(what: str, write: Callable[..., T], *args: object) -> T:
    """``write(*args)``, tried again after a transient database failure: PostgreSQL chose it as a deadlock
    victim, or the connection was lost (a database restart or failover). Dropping the batch would lose MQTT
    readings, which are not sent again; a retried batch is harmless, since readings are keyed by their ids."""
    delay = 0.05
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            return write(*args)
        except OperationalError as error:
            if attempt == WRITE_ATTEMPTS:
                raise
            log.warning(
                "%s failed (attempt %d of %d), again in %.1f s: %s",
                what, attempt, WRITE_ATTEMPTS, delay, str(error.orig or error).splitlines()[0],
            )  # fmt: skip
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: two victims do not collide again in step
            delay = min(delay * 2, MAX_WRITE_DELAY_S)
    raise AssertionError("unreachable")


def mqtt_sites(endpoints: Sequence[MeterEndpoint]) -> tuple[str, ...]:
    """The MQTT sites (topic level ``{site}``) of these meters; every site (``+``) when there are none, or when a
    site name could not be subscribed to by name."""
    sites = sorted({endpoint.link_id for endpoint in endpoints})
    if not sites or not all(mqtt_protocol.valid_id(site) for site in sites):
        return ("+",)
    return tuple(sites)
