"""The ingest queue (issue 10): head-ends in queue mode write batches of readings, workers rate and book them.

- End to end on SQLite and PostgreSQL: the real head-end runtime in queue mode writes a batch (no rating there);
  the worker's ``ingest`` job, polling every 30 s, is woken by the commit and books it: readings, ledger
  entries, the balance decision (a trip) and the audit exact, the queue empty.
- Two workers (threads with engines of their own) drain one queue on PostgreSQL: every batch is taken once,
  no reading is ingested twice (no duplicates seen), each wallet is charged exactly price x energy.
- A worker PROCESS claims a batch, ingests it inside its open transaction and is SIGKILLed: meanwhile another
  worker skips the locked batch and takes the others; once the killed connection is gone it takes that batch,
  exactly once.
- A bad payload, and a batch whose ingest fails in the database, are parked after ``max_attempts`` with the
  reason, and the queue moves on; ``requeue_failed`` puts them back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import ColumnElement, Connection, Engine, Table, func, insert, select

from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.domain.rating import Reading
from powergate.headend.model import MeterEndpoint, MeterSnapshot, Transport
from powergate.headend.status import save_endpoints
from powergate.services import ingest_queue, prepaid
from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
from powergate.services.ingest import Ingestor
from powergate.services.ingest_queue import DrainReport, IngestQueue
from powergate.services.worker import JobRunner, WorkerSettings, WorkerTotals, worker_jobs
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.db import make_engine
from powergate.store.tables import ledger_entries, readings, tariffs
from powergate.store.tables_ingest_queue import ingest_batches
from powergate.store.tables_prepaid import outbox
from testkit import FLAT_TARIFF as TARIFF
from testkit import truncate_all

ROOT = Path(__file__).resolve().parents[2]
MICROS_PER_WH = 1_000
"""1 yuan/kWh: one Wh costs 1,000 micros exactly."""
WAKE_DEADLINE_S = 5.0
"""The job polls every 30 s: a batch booked within this was woken by the head-end's commit."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def add_meters(engine: Engine, count: int, balance_micros: int = 10**9, prefix: str = "Q") -> list[str]:
    now = utc_now()
    meter_ids = [f"{prefix}-{n}" for n in range(count)]
    with engine.begin() as conn:
        if count_in(conn, tariffs, tariffs.c.id == "flat") == 0:
            metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", TARIFF, now)
        endpoints = []
        for n, meter_id in enumerate(meter_ids):
            code = wallet_code(f"A-{meter_id}")
            account_id = ledger_store.ensure_account(conn, code, now)
            metering.add_meter(conn, meter_id, account_id, "flat", now, max_power_w=2_000_000)
            ledger_store.post(conn, recharge_entry(f"opening:{code}", code, "cash", balance_micros, now), now)
            policy = prepaid.WalletPolicy(reconnect_micros=0, friendly_window="off")
            assert prepaid.set_policy(conn, account_id, policy, now) is None
            address = f"{prefix.encode().hex()}{n + 1:08d}"[-12:]
            endpoints.append(MeterEndpoint(meter_id, Transport.DLT645, address, "869000000000001"))
        save_endpoints(conn, endpoints)
    return meter_ids


def balance(engine: Engine, meter_id: str) -> int:
    with engine.connect() as conn:
        return ledger_store.balance(conn, wallet_code(f"A-{meter_id}")).balance_micros


def count_in(conn: Connection, table: Table, *where: ColumnElement[bool]) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def count(engine: Engine, table: Table, *where: ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return count_in(conn, table, *where)


def reading_entries(engine: Engine) -> int:
    return count(engine, ledger_entries, ledger_entries.c.idempotency_key.like("reading:%"))


def audit(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(ledger_store.audit(conn))


# -- end to end: head-end in queue mode -> worker job ----------------------------------------------------------


def test_a_head_end_in_queue_mode_queues_readings_and_the_woken_worker_books_them_exactly(engine: Engine) -> None:
    (meter_id,) = add_meters(engine, 1, balance_micros=500_000)  # 0.5 yuan: 1.2 kWh runs it out
    runtime = HeadendRuntime(engine, HeadendSettings(name="headend-q", dtu_listen=None, ingest="queue"))
    runtime.load_endpoints()
    t0 = utc_now().replace(microsecond=0) - dt.timedelta(hours=1)
    first = [MeterSnapshot(meter_id, t0, total_wh=1_000, voltage_dv=2200)]
    later = [
        MeterSnapshot(meter_id, t0 + dt.timedelta(minutes=15 * n), total_wh=1_000 + 600 * n, voltage_dv=2200)
        for n in (1, 2)
    ]
    totals = WorkerTotals()
    jobs = worker_jobs(engine, WorkerSettings(name="w-q", ingest_every_s=30.0), totals=totals)
    runner = JobRunner("w-q", [job for job in jobs if job.name == "ingest"])

    async def scenario() -> float:
        await runtime._on_readings(first)  # queued before the worker starts: its first run books it
        assert count(engine, readings) == 0, "queue mode: the head-end does not rate"
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        try:
            deadline = time.monotonic() + WAKE_DEADLINE_S
            while runner.stats["ingest"].runs < 1 or count(engine, ingest_batches):
                assert time.monotonic() < deadline, runner.stats
                await asyncio.sleep(0.02)
            queued_at = time.monotonic()
            await runtime._on_readings(later)
            while count(engine, readings) < 3:
                assert time.monotonic() < queued_at + WAKE_DEADLINE_S, "the head-end's commit did not wake the job"
                await asyncio.sleep(0.02)
            return time.monotonic() - queued_at
        finally:
            stop.set()
            await running

    woken_in_s = asyncio.run(scenario())
    assert woken_in_s < WAKE_DEADLINE_S
    assert runtime.stats.queued == 2 and runtime.stats.readings == 3 and runtime.stats.rated == 0
    assert runtime.stats.samples == 3, "the head-end still stores samples in queue mode"
    assert totals.ingested_batches == 2 and totals.ingested_readings == 3 and totals.ingest_failures == 0
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(readings.c.id, readings.c.status)).all())
        trips = conn.execute(select(func.count()).where(outbox.c.kind == "trip")).scalar_one()
    assert sorted(statuses.values()) == ["rated", "rated", "skipped"]  # the first is the meter's baseline
    assert reading_entries(engine) == 2
    assert balance(engine, meter_id) == 500_000 - 1_200 * MICROS_PER_WH
    assert trips == 1, "the balance policy ran in the worker's transaction and decided the trip"
    assert audit(engine) == []
    assert count(engine, ingest_batches) == 0


def test_serve_keeps_direct_ingest_when_head_end_and_worker_share_one_sqlite_process() -> None:
    from powergate.cli.serve import ingest_mode
    from powergate.config import ConfigError, load_config

    queue_env = {"POWERGATE_HEADEND_INGEST": "queue"}
    sqlite = load_config(environ=queue_env | {"POWERGATE_DATABASE_URL": "sqlite:///x.db"})
    postgres = load_config(environ=queue_env | {"POWERGATE_DATABASE_URL": "postgresql+psycopg://u@h/db"})
    assert ingest_mode(sqlite, ("api", "headend", "worker", "scheduler")) == "direct"
    assert ingest_mode(sqlite, ("headend",)) == "queue"
    assert ingest_mode(postgres, ("api", "headend", "worker", "scheduler")) == "queue"
    assert load_config(environ={}).headend_ingest == "direct"
    with pytest.raises(ConfigError, match=r"headend\.ingest.*'fast' is not one of direct, queue"):
        load_config(environ={"POWERGATE_HEADEND_INGEST": "fast"})


# -- bad batches ----------------------------------------------------------------------------------------------


def test_a_bad_batch_is_parked_after_max_attempts_with_its_reason_and_the_queue_moves_on(engine: Engine) -> None:
    meter_ids = add_meters(engine, 2)
    now = utc_now()
    t0 = now - dt.timedelta(hours=1)
    with engine.begin() as conn:
        bad_json = conn.execute(
            insert(ingest_batches)
            .values(enqueued_at=now, source="headend-x", payload="{not json", count=1)
            .returning(ingest_batches.c.id)
        ).scalar_one()
        # decodes, but its register does not fit the database: the ingest fails there, in its savepoint
        huge = ingest_queue.enqueue(conn, "headend-x", [Reading("Q-1@huge", meter_ids[1], t0, 2**70)], now)[0]
        good = [Reading(f"{meter_id}@{n}", meter_id, t0 + dt.timedelta(minutes=15 * n), 100 * n)
                for meter_id in meter_ids for n in (1, 2)]  # fmt: skip
        ingest_queue.enqueue(conn, "headend-x", good, now)
    queue = IngestQueue(engine, Ingestor(engine, after_post=prepaid.after_ingest), max_attempts=3)
    report = queue.drain(max_s=30)

    assert report.failures == 6 and [batch_id for batch_id, _ in report.parked] == [bad_json, huge]
    assert report.batches == 1 and report.readings == 4 and report.rated == 2 and not report.more
    with engine.connect() as conn:
        parked = {row.id: row for row in conn.execute(select(ingest_batches))}
    assert set(parked) == {bad_json, huge}
    assert all(row.state == "failed" and row.attempts == 3 and row.failed_at is not None for row in parked.values())
    assert parked[bad_json].last_error.startswith("BadBatch: payload is not JSON")
    assert count(engine, readings, readings.c.id == "Q-1@huge") == 0, "nothing of a failed ingest is kept"
    assert count(engine, readings) == 4 and reading_entries(engine) == 2 and audit(engine) == []
    with engine.connect() as conn:
        assert queue.totals.parked == 2 and ingest_queue.counts(conn) == {"queued": 0, "failed": 2}

    with engine.begin() as conn:
        assert ingest_queue.requeue_failed(conn, [bad_json]) == 1
        assert ingest_queue.counts(conn) == {"queued": 1, "failed": 1}
    assert queue.drain(max_s=30).parked == [(bad_json, parked[bad_json].last_error)]


def test_a_transient_error_counts_no_attempt_and_leaves_the_batch_queued(engine: Engine) -> None:
    from sqlalchemy.exc import OperationalError

    (meter_id,) = add_meters(engine, 1)
    ingest_queue.enqueue_batch(engine, "headend-x", [Reading("Q-0@1", meter_id, utc_now(), 100)], utc_now())

    class Flaky(Ingestor):
        def ingest_in(self, conn: object, batch: object) -> object:  # type: ignore[override]
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    with pytest.raises(OperationalError):
        IngestQueue(engine, Flaky(engine)).drain(max_s=30)
    with engine.connect() as conn:
        assert conn.execute(select(ingest_batches.c.state, ingest_batches.c.attempts)).one() == ("queued", 0)
    assert IngestQueue(engine, Ingestor(engine)).drain(max_s=30).batches == 1


# -- several workers on PostgreSQL ----------------------------------------------------------------------------


STEPS, METERS = 40, 10


def step_batches(meter_ids: list[str], t0: dt.datetime, steps: int = STEPS) -> list[list[Reading]]:
    """One batch per step: a reading of every meter, 15 minutes apart, 100..190 Wh each."""
    return [
        [Reading(f"{m}@{s}", m, t0 + dt.timedelta(minutes=15 * s), 10_000 + s * 100 + (s * 37 + i) % 90)
         for i, m in enumerate(meter_ids)]
        for s in range(steps)
    ]  # fmt: skip


def charged_exactly(engine: Engine, meter_ids: list[str], start_micros: int) -> None:
    """Each wallet was charged price x (last register - the meter's baseline register): each Wh once."""
    with engine.connect() as conn:
        baselines = dict(
            conn.execute(
                select(readings.c.meter_id, readings.c.total_wh).where(readings.c.reason.like("baseline:%"))
            ).all()
        )
        last = dict(
            conn.execute(select(readings.c.meter_id, func.max(readings.c.total_wh)).group_by(readings.c.meter_id)).all()
        )
    for meter_id in meter_ids:
        expected = start_micros - (last[meter_id] - baselines[meter_id]) * MICROS_PER_WH
        assert balance(engine, meter_id) == expected, meter_id


@pytest.mark.postgres
def test_two_workers_drain_one_queue_with_every_batch_taken_once_and_no_reading_twice(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    truncate_all(url)
    engine = make_engine(url)
    try:
        meter_ids = add_meters(engine, METERS)
        t0 = utc_now() - dt.timedelta(days=1)
        for batch in step_batches(meter_ids, t0):
            ingest_queue.enqueue_batch(engine, "headend-a", batch, utc_now())
        reports: dict[str, DrainReport] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def work(name: str) -> None:
            own = make_engine(url)
            queue = IngestQueue(own, Ingestor(own, after_post=prepaid.after_ingest))
            total = reports.setdefault(name, DrainReport())
            try:
                barrier.wait(10)
                while True:
                    drained = queue.drain(max_batches=5)
                    for key in ("batches", "readings", "rated", "skipped", "duplicates", "failures"):
                        setattr(total, key, getattr(total, key) + getattr(drained, key))
                    if not drained.more:
                        return
            except BaseException as error:
                errors.append(error)
            finally:
                own.dispose()

        threads = [threading.Thread(target=work, args=(name,)) for name in ("w1", "w2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        w1, w2 = reports["w1"], reports["w2"]
        assert w1.batches + w2.batches == STEPS and w1.batches > 0 and w2.batches > 0, (w1.batches, w2.batches)
        assert w1.readings + w2.readings == STEPS * METERS
        assert w1.duplicates + w2.duplicates == 0, "a reading was ingested twice"
        assert w1.failures + w2.failures == 0
        assert count(engine, ingest_batches) == 0
        assert count(engine, readings) == STEPS * METERS
        with engine.connect() as conn:
            posted, distinct = conn.execute(
                select(func.count(readings.c.entry_id), func.count(func.distinct(readings.c.entry_id)))
            ).one()
        assert reading_entries(engine) == posted == distinct == w1.rated + w2.rated
        charged_exactly(engine, meter_ids, 10**9)
        assert audit(engine) == []
    finally:
        engine.dispose()


CHILD = """
import sys, time
from powergate.services import prepaid
from powergate.services.ingest import Ingestor
from powergate.services.ingest_queue import claim, decode
from powergate.store.db import make_engine

engine = make_engine(sys.argv[1])
conn = engine.connect()
conn.begin()
claimed = claim(conn)
report = Ingestor(engine, after_post=prepaid.after_ingest).ingest_in(conn, decode(claimed.payload))
print(claimed.batch_id, report.rated, flush=True)
time.sleep(120)  # holding the batch, its readings and the meters' rating states, uncommitted
"""


@pytest.mark.postgres
def test_a_worker_killed_holding_a_claimed_batch_loses_it_to_another_worker_exactly_once(
    migrated_postgres_url: str,
) -> None:
    url = migrated_postgres_url
    truncate_all(url)
    engine = make_engine(url)
    child: subprocess.Popen[str] | None = None
    try:
        held_meters = add_meters(engine, 3, prefix="H")
        other_meters = add_meters(engine, 3, prefix="O")
        t0 = utc_now() - dt.timedelta(days=1)
        held_batches = step_batches(held_meters, t0, steps=2)
        ingest_queue.enqueue_batch(engine, "headend-a", held_batches[0], utc_now())  # the oldest: the child's
        for batch in step_batches(other_meters, t0, steps=4):
            ingest_queue.enqueue_batch(engine, "headend-a", batch, utc_now())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True, env=env,
                                 cwd=ROOT)  # fmt: skip
        assert child.stdout is not None
        held_id, rated_by_child = (int(x) for x in child.stdout.readline().split())
        assert rated_by_child == 0  # the first reading of each meter is its baseline

        queue = IngestQueue(engine, Ingestor(engine, after_post=prepaid.after_ingest))
        meanwhile = queue.drain(max_s=30)
        assert meanwhile.batches == 4 and not meanwhile.more, "the locked batch is skipped, the others are taken"
        with engine.connect() as conn:
            assert conn.execute(select(ingest_batches.c.id)).scalars().all() == [held_id]
        assert count(engine, readings, readings.c.meter_id.in_(held_meters)) == 0, "the child never committed"

        child.send_signal(signal.SIGKILL)
        child.wait(10)
        taken = DrainReport()
        deadline = time.monotonic() + 10
        while taken.batches == 0:  # until PostgreSQL has seen the connection die and rolled it back
            assert time.monotonic() < deadline, "the killed worker's batch was never released"
            taken = queue.drain(max_s=30)
            time.sleep(0.05)
        assert taken.batches == 1 and taken.readings == 3 and taken.duplicates == 0
        ingest_queue.enqueue_batch(engine, "headend-a", held_batches[1], utc_now())
        assert queue.drain(max_s=30).rated == 3
        assert count(engine, ingest_batches) == 0
        assert count(engine, readings, readings.c.meter_id.in_(held_meters)) == 6
        charged_exactly(engine, held_meters + other_meters, 10**9)
        assert audit(engine) == []
    finally:
        if child is not None:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
        engine.dispose()
