"""The worker and scheduler roles: the periodic jobs of the platform, each on its own interval.

``powergate serve --role worker`` runs ``worker_jobs``: the outbox relay (trip / close commands and the
notifications of balance decisions) and trips deferred out of a friendly window, notification delivery through
the configured channels, the reconciliation of unpaid payment orders with their providers, and the ingest queue
(batches of readings written by head-ends in queue mode, rated and booked here; ``services.ingest_queue``).
``--role scheduler`` runs ``scheduler_jobs``: the daily freeze of every site (catching up every missed midnight)
and, once a month has ended, its monthly freeze and settlement; once a day, the partitions of ``readings`` and
the retention of raw readings (``services.retention``).

Every job is safe to run in several processes at once, so roles can be split and doubled freely:
- the outbox relay marks rows with a conditional UPDATE and commands are keyed by the outbox key;
- notifications are claimed with leases (``services.notify.DeliveryWorker``);
- payment reconciliation settles through ``payments.settle``, which credits a payment once;
- a queued batch of readings is claimed with ``FOR UPDATE SKIP LOCKED`` and deleted in the transaction that books
  it (``services.ingest_queue``);
- freezes and the readings maintenance are keyed (job, period) runs (``services.freeze.claim``).

A job may also be woken (``Job.wake``): the outbox relay runs as soon as any process commits an outbox row, the
ingest job as soon as a head-end commits a batch (``store.wakeup``: LISTEN / NOTIFY on PostgreSQL), its interval
staying the upper bound. A job that stopped at its limit with work left (``Job.again``) runs again at once.

Invariants of the runner: one job's failure is logged and counted and never stops the others (it runs again at
its next interval); jobs run one at a time, in a worker thread when they block, so the event loop stays free;
time for the work (``now``) comes from the injected clock (the demo's runs fast), intervals are real seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from powergate.domain.notifications import Channel
from powergate.services import autorecharge, batch, billing, freeze, notices, notify, payments, prepaid, retention
from powergate.services.ingest import Ingestor
from powergate.services.ingest_queue import IngestQueue
from powergate.store import wakeup

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
JobFn = Callable[[dt.datetime], Awaitable[str | None]]
"""A job: does its work for ``now`` and returns a one-line summary worth logging, or None."""

MAX_ERROR_CHARS = 500


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every_s: float
    run: JobFn
    wake: Callable[[], wakeup.Subscription] | None = None
    """Makes a subscription whose wake-ups run the job at once (``every_s`` stays the upper bound)."""
    again: Callable[[], bool] | None = None
    """After a run: True when the job stopped at its limit with work left; it is then due again at once (the
    other due jobs run first)."""

    def __post_init__(self) -> None:
        assert self.every_s > 0, f"job {self.name}: every_s must be positive"


@dataclass(slots=True)
class JobStats:
    runs: int = 0
    failures: int = 0
    last_summary: str | None = None
    last_error: str | None = None


class JobRunner:
    """Runs ``jobs`` until ``stop`` is set: each as soon as it is due, then again ``every_s`` later."""

    def __init__(self, name: str, jobs: Sequence[Job], clock: Clock = utc_now) -> None:
        assert len({job.name for job in jobs}) == len(jobs), "job names must be unique"
        self.name = name
        self.jobs = list(jobs)
        self.clock = clock
        self.stats: dict[str, JobStats] = {job.name: JobStats() for job in jobs}
        self.ready = asyncio.Event()

    async def run_once(self, job: Job) -> None:
        stats = self.stats[job.name]
        try:
            summary = await job.run(self.clock())
        except Exception as error:  # one bad round must not stop the worker; the job runs again next interval
            stats.failures += 1
            stats.last_error = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
            log.exception("%s: job %s failed", self.name, job.name)
            return
        stats.runs += 1
        stats.last_summary = summary
        if summary:
            log.info("%s: %s: %s", self.name, job.name, summary)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        due = {job.name: loop.time() for job in self.jobs}
        wakes = {job.name: job.wake() for job in self.jobs if job.wake is not None}
        self.ready.set()
        try:
            while not stop.is_set():
                for job in self.jobs:
                    if stop.is_set():
                        break
                    if loop.time() >= due[job.name]:
                        await self.run_once(job)
                        more = job.again is not None and job.again()
                        due[job.name] = loop.time() + (0.0 if more else job.every_s)
                wait_s = min(due.values(), default=loop.time() + 1.0) - loop.time()
                await self._idle(stop, max(wait_s, 0.01), wakes, due)
        finally:
            for subscription in wakes.values():
                subscription.close()

    async def _idle(
        self, stop: asyncio.Event, wait_s: float, wakes: Mapping[str, wakeup.Subscription], due: dict[str, float]
    ) -> None:
        """Wait ``wait_s``, or less: until ``stop``, or until a job's wake-up fires (that job is then due now)."""
        waits: dict[asyncio.Future[bool], str | None] = {asyncio.ensure_future(stop.wait()): None}
        for name, subscription in wakes.items():
            waits[asyncio.ensure_future(subscription.wait(wait_s))] = name
        try:
            done, _ = await asyncio.wait(waits, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()  # a wake-up not yet taken stays set on its subscription for the next round
        now = asyncio.get_running_loop().time()
        for waiter in done:
            job_name = waits[waiter]
            if job_name is not None and not waiter.cancelled() and waiter.result():
                due[job_name] = now


# --- the worker role -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    name: str = "worker-1"
    relay_outbox: bool = True
    """Relay the outbox and deferred trips here (the head-end does it too; both may, the relay is idempotent)."""
    outbox_every_s: float = 1.0
    due_trips_every_s: float = 10.0
    notify_every_s: float = 2.0
    notify_lease_s: int = 120
    """Claim lease of a notification in clock seconds; an accelerated clock needs it scaled up by its speed."""
    payments_every_s: float = 60.0
    notices_every_s: float = 10.0
    """Notice producers (recharge, refund, alarms, offline meters, daily report, reconciliation, run-out)."""
    billing_every_s: float = 60.0
    """Property billing: custom charges due, overdue bills, bills whose order was paid."""
    batches_every_s: float = 5.0
    """Batch operations: start those due, collect their commands' results, start the next targets."""
    autorecharge_every_s: float = 5.0
    """Wallets bound to a payment agreement whose balance fell below their threshold."""
    ingest_queue: bool = True
    """Ingest the batches head-ends in queue mode wrote (``services.ingest_queue``); an empty queue costs one
    indexed query per ``ingest_every_s``."""
    ingest_every_s: float = 1.0
    """Upper bound of the wait for a queued batch (a head-end's commit wakes the job at once)."""
    ingest_max_attempts: int = 3
    """Failed attempts (not transient) after which a batch is parked as failed."""


@dataclass(slots=True)
class WorkerTotals:
    """What the worker did since it started (for logs, tests and the demo's status line)."""

    relayed_rows: int = 0
    commands: int = 0
    relay_problems: int = 0
    deferred_trips: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0
    payments_credited: int = 0
    payments_expired: int = 0
    ingested_batches: int = 0
    ingested_readings: int = 0
    ingest_failures: int = 0
    """Failed attempts to ingest a queued batch (not transient); ``ingest_parked`` of them parked it."""
    ingest_parked: int = 0
    problems: list[str] = field(default_factory=list)


def worker_jobs(
    engine: Engine,
    settings: WorkerSettings,
    clock: Clock = utc_now,
    *,
    payment_channels: payments.Channels | None = None,
    notify_channels: Mapping[str, Channel] | None = None,
    totals: WorkerTotals | None = None,
) -> list[Job]:
    """The worker role's jobs; a part without its configuration (no channels) is left out."""
    done = totals if totals is not None else WorkerTotals()
    jobs: list[Job] = []

    if settings.relay_outbox:

        async def relay(now: dt.datetime) -> str | None:
            relayed = await asyncio.to_thread(prepaid.process_outbox, engine, now)
            done.relayed_rows += relayed.rows
            done.commands += relayed.commands
            done.relay_problems += len(relayed.problems)
            for problem in relayed.problems:
                log.warning("outbox: %s", problem)
            return f"{relayed.rows} outbox rows, {relayed.commands} commands" if relayed.rows else None

        async def due_trips(now: dt.datetime) -> str | None:
            written = await asyncio.to_thread(prepaid.due_trips, engine, now)
            done.deferred_trips += written
            return f"{written} deferred trips decided" if written else None

        jobs.append(Job("outbox", settings.outbox_every_s, relay, wake=lambda: wakeup.subscribe(engine, wakeup.OUTBOX)))
        jobs.append(Job("due_trips", settings.due_trips_every_s, due_trips))

    async def produce_notices(now: dt.datetime) -> str | None:
        run = await asyncio.to_thread(notices.run_notices, engine, now)
        done.problems.extend(run.problems[-10:])
        return f"{run.total} notices" if run.total else None

    def billing_due(now: dt.datetime) -> str | None:
        charged = billing.run_charges(engine, now)
        overdue = billing.mark_overdue(engine, now)
        paid = billing.settle_paid_bills(engine, now)
        for problem in charged.problems:
            log.warning("charges: %s", problem)
        if not (charged.charged or overdue or paid):
            return None
        return f"{charged.charged} charges, {len(overdue)} bills overdue, {len(paid)} bills paid"

    async def run_billing(now: dt.datetime) -> str | None:
        return await asyncio.to_thread(billing_due, now)

    if settings.ingest_queue:
        jobs.append(_ingest_job(engine, settings, clock, done))

    jobs.append(Job("notices", settings.notices_every_s, produce_notices))
    jobs.append(Job("billing", settings.billing_every_s, run_billing))

    async def run_batches(now: dt.datetime) -> str | None:
        return (await asyncio.to_thread(batch.run_due, engine, now)).summary()

    jobs.append(Job("batches", settings.batches_every_s, run_batches))

    if notify_channels:
        delivery = notify.DeliveryWorker(
            engine, notify_channels, clock, worker_id=f"{settings.name}-notify", lease_s=settings.notify_lease_s
        )

        async def deliver(now: dt.datetime) -> str | None:
            sent = await delivery.run_until_idle(max_rounds=10)
            done.notifications_sent += sent.sent
            done.notifications_failed += sent.failed
            return f"{sent.sent} sent, {sent.retried} to retry, {sent.failed} failed" if sent.claimed else None

        jobs.append(Job("notifications", settings.notify_every_s, deliver))

    if payment_channels:
        channels = payment_channels

        async def reconcile(now: dt.datetime) -> str | None:
            report = await asyncio.to_thread(payments.reconcile_pending, engine, channels, now)
            done.payments_credited += len(report.credited)
            done.payments_expired += len(report.expired)
            for failure in report.failures:
                log.warning("payment reconciliation: %s", failure)
            if report.credited or report.expired or report.failures:
                return f"{len(report.credited)} credited, {len(report.expired)} expired, {len(report.failures)} failed"
            return None

        jobs.append(Job("payments", settings.payments_every_s, reconcile))

        async def auto_recharge(now: dt.datetime) -> str | None:
            placed = await asyncio.to_thread(autorecharge.run_due, engine, channels, now)
            return f"{placed} auto-recharge orders" if placed else None

        jobs.append(Job("autorecharge", settings.autorecharge_every_s, auto_recharge))
    return jobs


def _ingest_job(engine: Engine, settings: WorkerSettings, clock: Clock, done: WorkerTotals) -> Job:
    """Batches of readings queued by head-ends: rated and booked here, oldest first, each exactly once."""
    ingestor = Ingestor(engine, clock=clock, after_post=prepaid.after_ingest)
    queue = IngestQueue(engine, ingestor, max_attempts=settings.ingest_max_attempts, clock=clock)
    left = [False]

    async def ingest(now: dt.datetime) -> str | None:
        left[0] = False  # a round that fails (the database went away) waits its interval, not a hot loop
        drained = await asyncio.to_thread(queue.drain)
        left[0] = drained.more
        done.ingested_batches += drained.batches
        done.ingested_readings += drained.readings
        done.ingest_failures += drained.failures
        done.ingest_parked += len(drained.parked)
        return drained.summary()

    return Job("ingest", settings.ingest_every_s, ingest, wake=lambda: wakeup.subscribe(engine, wakeup.INGEST),
               again=lambda: left[0])  # fmt: skip


# --- the scheduler role --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    name: str = "scheduler-1"
    freeze_every_s: float = 300.0
    readings_keep_months: int = 0
    """Months of raw readings kept (0: all); see ``services.retention``."""
    readings_every_s: float = 3600.0
    """Seconds between two looks for the day's partition maintenance and retention (it runs once a day)."""


def _freeze_scopes(engine: Engine) -> list[int | str]:
    """Every site, and the time zones of meters that belong to no site yet."""
    with engine.connect() as conn:
        sites = [int(s) for (s,) in conn.execute(text("SELECT id FROM sites ORDER BY id"))]
        zones = [
            str(z)
            for (z,) in conn.execute(
                text(
                    "SELECT DISTINCT m.timezone FROM meters m WHERE NOT EXISTS (SELECT 1 FROM meter_assignments ma"
                    " WHERE ma.meter_id = m.id) ORDER BY 1"
                )
            )
        ]
    return [*sites, *zones]


def _previous_month(now: dt.datetime, zone: str) -> dt.date:
    from zoneinfo import ZoneInfo

    first = now.astimezone(ZoneInfo(zone)).date().replace(day=1)
    return (first - dt.timedelta(days=1)).replace(day=1)


def scheduler_jobs(engine: Engine, settings: SchedulerSettings, clock: Clock = utc_now) -> list[Job]:
    """The scheduler role's jobs: daily freezes (with catch-up) and the last month's freeze and settlement."""

    def freeze_due(now: dt.datetime) -> str | None:
        scopes = _freeze_scopes(engine)
        if not scopes:
            return None
        runs = freeze.catch_up(engine, now, scopes=scopes)
        ran = [run for run in runs if run.ran]
        problems = [problem for run in runs for problem in run.problems]
        for problem in problems:
            log.warning("freeze: %s", problem)
        settled = 0
        with engine.connect() as conn:
            zones = {int(i): str(z) for i, z in conn.execute(text("SELECT id, timezone FROM sites"))}
        for scope in scopes:
            month = _previous_month(now, zones[scope] if isinstance(scope, int) else scope)
            monthly = freeze.monthly_freeze(engine, scope, month, now)
            if monthly.ran:  # the first process to freeze the month also settles it
                result = freeze.monthly_settlement(engine, scope, month, now)
                settled += 1
                for problem in result.problems:
                    log.warning("settlement %s: %s", month, problem)
        if not ran and not settled:
            return None
        return f"{len(ran)} daily freezes ({sum(r.meters for r in ran)} meters), {settled} monthly settlements"

    async def freeze_job(now: dt.datetime) -> str | None:
        return await asyncio.to_thread(freeze_due, now)

    async def readings_job(now: dt.datetime) -> str | None:
        run = await asyncio.to_thread(retention.run_retention, engine, now, settings.readings_keep_months)
        for problem in run.problems:
            log.warning("readings retention: %s", problem)
        return run.summary()

    return [
        Job("freeze", settings.freeze_every_s, freeze_job),
        Job("readings", settings.readings_every_s, readings_job),
    ]
