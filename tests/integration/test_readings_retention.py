"""Readings partitioned by month (PostgreSQL), partition maintenance and the retention of raw readings.

One meter on the flat tariff (0.6500 yuan/kWh) in Asia/Shanghai. Each PostgreSQL test gets a database of its
own (partitions are tables: a test that creates or drops them must not change the session's shared database).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, insert, select, text

from powergate.config import MAX_READINGS_KEEP_MONTHS, MIN_READINGS_KEEP_MONTHS, ConfigError, load_config
from powergate.domain.ledger import wallet_code
from powergate.domain.rating import Reading
from powergate.services import freeze, retention
from powergate.services.ingest import Ingestor
from powergate.services.worker import SchedulerSettings, scheduler_jobs
from powergate.store import ledger as ledger_store
from powergate.store import metering, partitions
from powergate.store.audit import audit_records
from powergate.store.db import make_engine, upgrade
from powergate.store.tables import readings
from testkit import PG_HOST, PG_PORT, PG_USER, require_service

FLAT = (Path(__file__).parents[2] / "docs/examples/tariffs/flat.toml").read_text()
TZ = "Asia/Shanghai"
T0 = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 7, 10, 4, 0, tzinfo=dt.UTC)
MONTHS = [dt.date(2026, month, 1) for month in range(1, 8)]


def _admin() -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own (not migrated), dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    import psycopg

    name = f"powergate_partitions_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(_admin(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of this test's own, not yet migrated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'powergate.db'}"
    return str(request.getfixturevalue("own_postgres"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database of this test's own."""
    if request.param == "sqlite":
        target = tmp_path / "powergate.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        url = f"sqlite:///{target}"
    else:
        url = request.getfixturevalue("own_postgres")
        upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(own_postgres: str) -> Iterator[Engine]:
    upgrade(own_postgres)
    engine = make_engine(own_postgres)
    yield engine
    engine.dispose()


def setup_meter(engine: Engine) -> None:
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat-2025", "Flat", "electricity", FLAT, T0)
        wallet_id = ledger_store.ensure_account(conn, wallet_code("A1"), T0)
        metering.add_meter(conn, "M1", wallet_id, "flat-2025", T0, timezone=TZ)


def reading(at: dt.datetime, total_wh: int) -> Reading:
    """As the head-end forms them: the id is the meter and the instant."""
    return Reading(f"M1@{int(at.timestamp())}", "M1", at, total_wh)


def month_readings() -> list[Reading]:
    """Two readings a month, January to July 2026, 10 kWh apart."""
    found = []
    for month in MONTHS:
        for day in (5, 20):
            at = dt.datetime(month.year, month.month, day, 12, tzinfo=dt.UTC)
            found.append(reading(at, 1_000_000 + 10_000 * len(found)))
    return [r for r in found if r.at < NOW]


def partition_of(engine: Engine) -> dict[str, str]:
    """reading id -> the partition that holds it."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, tableoid::regclass::text FROM readings")).all()
    return {str(reading_id): str(table) for reading_id, table in rows}


def reading_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(readings)).scalar_one())


# --- PostgreSQL: partitioning ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_after_the_upgrade_readings_is_partitioned_by_month_with_a_default_partition(pg_engine: Engine) -> None:
    this_month = partitions.month_of(dt.datetime.now(dt.UTC))
    with pg_engine.connect() as conn:
        strategy = conn.execute(
            text("SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'readings'::regclass")
        ).scalar_one()
        children = conn.execute(
            text("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'readings'::regclass")
        ).scalars()
        key = conn.execute(
            text(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = 'readings'::regclass AND i.indisprimary"
            )
        ).scalar_one()
        indexes = conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'readings'")).scalars()
        assert partitions.is_partitioned(conn)
        assert strategy == "r"
        assert set(children) >= {"readings_default", *(partitions.partition_name(this_month),)}
        assert key == ["at", "id"]
        assert set(indexes) == {"pk_readings", "ix_readings_meter_id_at"}


@pytest.mark.postgres
def test_readings_land_in_their_month_and_a_far_future_one_in_default(pg_engine: Engine) -> None:
    setup_meter(pg_engine)
    with pg_engine.begin() as conn:
        created = partitions.ensure_partitions(conn, NOW, ahead_months=2)
    assert created == ["readings_2026_07", "readings_2026_08", "readings_2026_09"]
    with pg_engine.begin() as conn:
        assert partitions.ensure_partitions(conn, NOW, ahead_months=2) == []  # idempotent
    july, august = dt.datetime(2026, 7, 1, tzinfo=dt.UTC), dt.datetime(2026, 8, 31, 23, 59, 59, tzinfo=dt.UTC)
    far = dt.datetime(2031, 1, 15, tzinfo=dt.UTC)
    report = Ingestor(pg_engine, clock=lambda: NOW).ingest(
        [reading(july, 0), reading(august, 1_000), reading(far, 2_000)]
    )
    assert report.rejected == [] and report.rated + report.skipped + report.quarantined == 3
    where = partition_of(pg_engine)
    assert where[reading(july, 0).reading_id] == "readings_2026_07"
    assert where[reading(august, 0).reading_id] == "readings_2026_08"
    assert where[reading(far, 0).reading_id] == "readings_default"

    # a partition created for a month the default partition holds readings of takes them over
    with pg_engine.begin() as conn:
        assert partitions.ensure_partitions(conn, far, ahead_months=0) == ["readings_2031_01"]
    assert partition_of(pg_engine)[reading(far, 0).reading_id] == "readings_2031_01"
    assert reading_count(pg_engine) == 3
    # the same readings again are duplicates, wherever they are stored
    again = Ingestor(pg_engine, clock=lambda: NOW).ingest([reading(july, 0), reading(far, 2_000)])
    assert again.duplicates == 2 and reading_count(pg_engine) == 3


# --- retention, on both databases ------------------------------------------------------------------------------


def test_retention_drops_old_months_keeps_the_rest_and_ingest_continues_exactly(
    own_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "ROWS_PER_TRANSACTION", 4)  # SQLite: several bounded transactions
    monkeypatch.setattr(partitions, "DELETE_CHUNK", 3)
    engine = own_engine
    postgres = engine.dialect.name == "postgresql"
    setup_meter(engine)
    if postgres:
        with engine.begin() as conn:
            for month in MONTHS:
                partitions.ensure_partitions(conn, partitions.month_start(month), ahead_months=0)
    ingestor = Ingestor(engine, clock=lambda: NOW)
    batch = month_readings()
    ingestor.ingest(batch)
    assert reading_count(engine) == len(batch) == 13

    # no daily freeze has run yet: the readings may still be needed, nothing is dropped
    refused = retention.run_retention(engine, NOW, keep_months=3, owner="s1")
    assert refused.ran and refused.rows == 0 and refused.cutoff is None
    assert "timezone:Asia/Shanghai: no daily freeze yet" in refused.problems[0]
    assert reading_count(engine) == 13

    later = NOW + dt.timedelta(days=1)
    yesterday = later.astimezone(ZoneInfo(TZ)).date() - dt.timedelta(days=1)
    assert freeze.daily_freeze(engine, TZ, yesterday, later).ran
    with engine.connect() as conn:
        state_before = metering.load_states(conn, ["M1"])["M1"]

    run = retention.run_retention(engine, later, keep_months=3, owner="s1")
    cutoff = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert (run.cutoff, run.rows, run.problems) == (cutoff, 6, [])
    assert run.months == (["2026-01", "2026-02", "2026-03"] if postgres else [])
    with engine.connect() as conn:
        left = conn.execute(select(readings.c.at)).scalars().all()
        assert len(left) == 7 and min(left) >= cutoff
        assert metering.load_states(conn, ["M1"])["M1"] == state_before
        records = audit_records(conn, action="drop_readings")
        kept = set(partitions.monthly_partitions(conn))
    if postgres:
        assert set(MONTHS[3:]) <= kept and not [month for month in kept if month < cutoff.date()]
    assert {(r.actor, r.subject) for r in records} == {("scheduler", "table:readings")}
    assert sum(r.detail["rows"] for r in records) == 6
    assert all(r.detail["cutoff"] == cutoff.isoformat() for r in records)
    assert len(records) == (1 if postgres else 2)

    # the same day again: the run is done, nothing more happens
    assert not retention.run_retention(engine, later, keep_months=3, owner="s2").ran

    # ingest carries on from the rating state: 5 kWh more at 0.6500 yuan/kWh is 3.25 yuan, exactly
    last = batch[-1]
    report = ingestor.ingest([reading(later, last.total_wh + 5_000)])
    assert (report.rated, report.charged_micros) == (1, 3_250_000)
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []


def test_a_retention_of_fewer_than_three_months_is_refused_with_a_clear_error() -> None:
    assert (retention.MIN_KEEP_MONTHS, retention.MAX_KEEP_MONTHS) == (
        MIN_READINGS_KEEP_MONTHS,
        MAX_READINGS_KEEP_MONTHS,
    )
    with pytest.raises(ValueError, match=r"readings_keep_months: 2 is not allowed; use 0 .* or 3\.\.1200"):
        retention.check_keep_months(2)
    retention.check_keep_months(0)
    retention.check_keep_months(3)
    with pytest.raises(ConfigError) as error:
        load_config(environ={"POWERGATE_SCHEDULER_READINGS_KEEP_MONTHS": "2"})
    assert error.value.setting == "scheduler.readings_keep_months"
    assert "POWERGATE_SCHEDULER_READINGS_KEEP_MONTHS" in str(error.value) and "at least" not in str(error.value)
    assert load_config(environ={"POWERGATE_SCHEDULER_READINGS_KEEP_MONTHS": "24"}).scheduler_readings_keep_months == 24
    assert load_config(environ={}).scheduler_readings_keep_months == 0


def test_retention_cutoff_is_the_start_of_a_month_keep_months_back() -> None:
    assert retention.retention_cutoff(NOW, 3) == dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert retention.retention_cutoff(dt.datetime(2026, 1, 31, 23, tzinfo=dt.UTC), 13) == dt.datetime(
        2024, 12, 1, tzinfo=dt.UTC
    )


# --- migration 0021 with readings in place ---------------------------------------------------------------------


def test_the_migration_keeps_every_existing_reading(empty_url: str) -> None:
    upgrade(empty_url, "0020")
    engine = make_engine(empty_url)
    try:
        setup_meter(engine)
        times = [
            dt.datetime(2019, 3, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC),
            dt.datetime(2035, 6, 1, tzinfo=dt.UTC),
        ]
        with engine.begin() as conn:
            for index, at in enumerate(times):
                conn.execute(
                    insert(readings).values(
                        id=f"M1@{int(at.timestamp())}",
                        meter_id="M1",
                        at=at,
                        total_wh=1_000 * index,
                        status="skipped" if index == 0 else "rated",
                        reason="baseline" if index == 0 else None,
                        amount_micros=None if index == 0 else 650 * 1_000,
                        received_at=at,
                    )
                )
            before = conn.execute(select(readings).order_by(readings.c.id)).all()
        engine.dispose()
        upgrade(empty_url)
        with engine.connect() as conn:
            after = conn.execute(select(readings).order_by(readings.c.id)).all()
        assert after == before and len(after) == 4
        if engine.dialect.name == "postgresql":
            where = partition_of(engine)
            assert sorted(where.values()) == [
                "readings_2019_03",
                "readings_2026_01",
                "readings_2026_01",
                "readings_2035_06",
            ]
            with engine.connect() as conn:
                assert conn.execute(text("SELECT to_regclass('readings_unpartitioned')")).scalar() is None
    finally:
        engine.dispose()


# --- ingest: duplicates found after the meters' locks ----------------------------------------------------------


@pytest.mark.postgres
def test_a_second_writer_of_a_meter_waits_for_the_first_and_sees_its_reading_as_a_duplicate(
    pg_engine: Engine,
) -> None:
    """The key is (id, at) now: the same reading received twice a few milliseconds apart (an MQTT redelivery)
    has one id and two times, so only the lookup after the meter's lock keeps it from being stored twice."""
    setup_meter(pg_engine)
    ingestor = Ingestor(pg_engine, clock=lambda: NOW)
    ingestor.ingest([reading(NOW - dt.timedelta(hours=1), 1_000_000)])  # the meter has a rating state now
    first = reading(NOW + dt.timedelta(microseconds=100), 1_001_000)
    redelivered = Reading(first.reading_id, "M1", first.at + dt.timedelta(milliseconds=300), first.total_wh)
    reports = []
    with pg_engine.connect() as holder:
        with holder.begin():
            metering.lock_states(holder, ["M1"])  # writer A holds the meter
            waiter = threading.Thread(target=lambda: reports.append(ingestor.ingest([redelivered])))
            waiter.start()
            wait_for_lock_wait(pg_engine)
            Ingestor(pg_engine, clock=lambda: NOW)._ingest(holder, [first])  # A stores the reading, then commits
        waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert reports[0].duplicates == 1 and reports[0].rated == 0
    with pg_engine.connect() as conn:
        stored = conn.execute(select(func.count()).where(readings.c.id == first.reading_id)).scalar_one()
        assert stored == 1 and ledger_store.audit(conn) == []


def wait_for_lock_wait(engine: Engine, timeout_s: float = 10.0) -> None:
    """Until another session of this database waits for a lock (the second writer reached the meter's lock)."""
    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the second writer never waited for the meter's lock")


def test_the_scheduler_role_runs_the_readings_job_once_a_day(own_engine: Engine) -> None:
    settings = SchedulerSettings(readings_keep_months=3)
    job = {job.name: job for job in scheduler_jobs(own_engine, settings, clock=lambda: NOW)}["readings"]
    first = asyncio.run(job.run(NOW))
    if own_engine.dialect.name == "postgresql":
        assert first is not None and first.startswith("3 partitions created, 0 readings dropped")
    else:
        assert first is None  # nothing to create or drop
    assert asyncio.run(job.run(NOW + dt.timedelta(hours=1))) is None  # the day's run is done
    with own_engine.connect() as conn:
        assert audit_records(conn, action="drop_readings") == []
