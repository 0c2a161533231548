"""Readings rated and posted to the ledger per second, beside the raw insert rate of the same rows.

Fleet: meters with TOU band registers under a four-band commercial TOU tariff, a reading every 15 minutes.
Each timed run starts from a fresh, migrated database whose meters already have their baseline reading.

- *ingest*: ``Ingestor.ingest`` in batches (dedup lookup, meter and state lookup, rating, reading rows, ledger
  entries and postings, balance updates, state updates) in one transaction per batch.
- *ceiling*: the same rows (readings, entries, postings, balance deltas, states), computed beforehand, written
  through the same store functions in the same batches: what the database and driver cost alone.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.ledger import Entry, wallet_code
from powergate.domain.rating import Rated, RatingContext, RatingState, Reading, rate
from powergate.domain.tariff import Band, Season, Tariff, TariffVersion, Tou, TouPeriod
from powergate.services.ingest import ENTRY_ID_COLUMN, Ingestor, Outcome, RatingContexts, _deduction, reading_rows
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.bulk import Bulk
from powergate.store.db import make_engine, upgrade

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
START = dt.datetime(2026, 11, 2, tzinfo=SHANGHAI)
BATCH = 5_000
REPEATS = 3

SCHEDULE = (
    TouPeriod(0, 8 * 60, Band.VALLEY),
    TouPeriod(8 * 60, 10 * 60, Band.FLAT),
    TouPeriod(10 * 60, 12 * 60, Band.PEAK),
    TouPeriod(12 * 60, 14 * 60, Band.SHARP),
    TouPeriod(14 * 60, 22 * 60, Band.PEAK),
    TouPeriod(22 * 60, 24 * 60, Band.VALLEY),
)
TOU_TARIFF = Tariff(
    id="bench-tou",
    name="commercial TOU",
    commodity=Commodity.ELECTRICITY,
    currency="CNY",
    versions=(
        TariffVersion(
            effective_from=dt.datetime(2020, 1, 1),
            tou=Tou(
                prices_micros=(
                    (Band.SHARP, 1_350_000),
                    (Band.PEAK, 1_100_000),
                    (Band.FLAT, 700_000),
                    (Band.VALLEY, 350_000),
                ),
                seasons=(Season("all year", tuple(range(1, 13)), SCHEDULE),),
            ),
        ),
    ),
)


def band_of(local: dt.datetime) -> int:
    minute = local.hour * 60 + local.minute
    for period in SCHEDULE:
        if period.start_minute <= minute < period.end_minute:
            return int(period.band) - 1
    raise AssertionError(minute)


def fleet_readings(meters: int, per_meter: int) -> list[list[Reading]]:
    """Readings in ingest order: one round of every meter per 15 minutes, band registers advancing."""
    rounds: list[list[Reading]] = []
    registers = {m: [0, 0, 0, 0] for m in range(meters)}
    for step in range(per_meter):
        local = START + dt.timedelta(minutes=15 * step)
        band = band_of(local)
        at = local.astimezone(dt.UTC)
        round_: list[Reading] = []
        for m in range(meters):
            regs = registers[m]
            regs[band] += 10 * (1 + (m + step) % 7)
            bands = (regs[0], regs[1], regs[2], regs[3])
            round_.append(Reading(f"M{m}:{step}", f"M{m}", at, sum(bands), bands))
        rounds.append(round_)
    return rounds


def batches(rounds: list[list[Reading]]) -> list[list[Reading]]:
    flat = [r for round_ in rounds for r in round_]
    return [flat[i : i + BATCH] for i in range(0, len(flat), BATCH)]


def contexts() -> RatingContexts:
    calendar = SiteCalendar.china()

    def build(_conn: Connection, meter: metering.MeterRow) -> RatingContext:
        return RatingContext(TOU_TARIFF, calendar, ZoneInfo(meter.timezone))

    return RatingContexts(build)


def prepared(url: str, meters: int, baseline: list[Reading]) -> Engine:
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        metering.add_tariff(conn, TOU_TARIFF.id, TOU_TARIFF.name, "electricity", "{}", NOW)
        for m in range(meters):
            wallet_id = ledger_store.ensure_account(conn, wallet_code(f"A{m}"), NOW)
            metering.add_meter(conn, f"M{m}", wallet_id, TOU_TARIFF.id, NOW)
    Ingestor(engine, contexts(), clock=lambda: NOW).ingest(baseline)
    return engine


def run_ingest(engine: Engine, work: list[list[Reading]]) -> float:
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    started = time.perf_counter()
    for batch in work:
        ingestor.ingest(batch)
    return time.perf_counter() - started


Precomputed = list[tuple[list[tuple[object, ...]], list[Entry], list[RatingState]]]


def precompute(engine: Engine, work: list[list[Reading]], baseline: list[Reading]) -> Precomputed:
    """The rows each batch writes, computed once outside the timed region.

    A reading row's ``entry_id`` holds the index of its entry in the batch until the ids are known."""
    ctx = RatingContext(TOU_TARIFF, SiteCalendar.china(), SHANGHAI)
    states: dict[str, RatingState] = {}
    for reading in baseline:
        states[reading.meter_id] = rate(RatingState(reading.meter_id), reading, ctx).state
    out = []
    with engine.connect() as conn:
        bulk = Bulk(conn)
        for batch in work:
            outcomes: list[Outcome] = []
            entries: list[Entry] = []
            changed: dict[str, RatingState] = {}
            for reading in batch:
                outcome = rate(states[reading.meter_id], reading, ctx)
                assert isinstance(outcome, Rated)
                states[reading.meter_id] = changed[reading.meter_id] = outcome.state
                charge = outcome.charge
                entry = _deduction(charge, wallet_code("A" + reading.meter_id[1:]), reading)
                index = -1
                if entry is not None:
                    index = len(entries)
                    entries.append(entry)
                outcomes.append((reading, "rated", None, charge.amount_micros, False, index))
            rows = reading_rows(bulk, outcomes, range(len(entries)), bulk.ts(NOW))
            out.append((rows, entries, list(changed.values())))
    return out


def run_ceiling(engine: Engine, rows_per_batch: Precomputed, shares: dict[str, float] | None = None) -> float:
    """The precomputed rows written through the store; ``shares`` (if given) gets the seconds each part took."""
    accounts = ledger_store.AccountCache()
    with engine.begin() as conn:  # warm the account cache outside the timed region, as ingest has it
        for _rows, entries, _states in rows_per_batch[:1]:
            for entry in entries:
                for posting in entry.postings:
                    accounts.id_of(conn, posting.account, NOW)
    column = ENTRY_ID_COLUMN
    started = time.perf_counter()
    spent = shares if shares is not None else {}
    for part in ("ledger", "readings", "states", "commit"):
        spent.setdefault(part, 0.0)
    clock = time.perf_counter
    for rows, entries, states in rows_per_batch:
        with engine.begin() as conn:
            bulk = Bulk(conn)
            t0 = clock()
            ids = ledger_store.post_batch(conn, entries, NOW, accounts, bulk)
            rows_with_ids = [
                (*row[:column], None if row[column] is None else ids[row[column]], *row[column + 1 :]) for row in rows
            ]
            t1 = clock()
            metering.insert_readings(conn, rows_with_ids, bulk)
            t2 = clock()
            metering.save_states(conn, states, {s.meter_id for s in states}, bulk)
            t3 = clock()
        spent["ledger"] += t1 - t0
        spent["readings"] += t2 - t1
        spent["states"] += t3 - t2
        spent["commit"] += clock() - t3
    return time.perf_counter() - started


def measure(make_url: Callable[[], tuple[str, Callable[[], None]]], meters: int, per_meter: int) -> dict[str, float]:
    rounds = fleet_readings(meters, per_meter + 1)
    baseline, work = rounds[0], batches(rounds[1:])
    count = sum(len(b) for b in work)
    ingest_rates, ceiling_rates = [], []
    shares: list[dict[str, float]] = []
    for _ in range(REPEATS):
        for kind in ("ingest", "ceiling"):
            url, cleanup = make_url()
            engine = prepared(url, meters, baseline)
            rows = precompute(engine, work, baseline) if kind == "ceiling" else []
            try:
                if kind == "ingest":
                    ingest_rates.append(count / run_ingest(engine, work))
                else:
                    shares.append({})
                    ceiling_rates.append(count / run_ceiling(engine, rows, shares[-1]))
                with engine.connect() as conn:
                    assert ledger_store.audit(conn) == []
            finally:
                engine.dispose()
                cleanup()
    result = {
        "readings": count,
        "ingest": statistics.median(ingest_rates),
        "ceiling": statistics.median(ceiling_rates),
    }
    for part in shares[0]:  # microseconds per reading of each part of the ceiling, median over the runs
        result[f"us_{part}"] = statistics.median(s[part] for s in shares) / count * 1e6
    return result


def sqlite_url() -> tuple[str, Callable[[], None]]:
    folder = tempfile.TemporaryDirectory(prefix="pg-bench-")
    return f"sqlite:///{Path(folder.name) / 'bench.db'}", folder.cleanup


def postgres_url() -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"powergate_bench_{uuid.uuid4().hex[:8]}"
    admin = "host=127.0.0.1 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1/{name}", drop


def postgres_available() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def run(quick: bool) -> str:
    meters, per_meter = (1_000, 10) if quick else (2_000, 50)
    lines = [
        "## Ingest: readings rated and posted to the ledger",
        "",
        f"{meters:,} meters with TOU band registers, a four-band commercial TOU tariff, batches of {BATCH:,}, "
        f"one transaction per batch; median of {REPEATS} runs, each on a fresh database. *Ceiling*: the same "
        "rows (readings, ledger entries, postings, balances, rating states) computed beforehand and written "
        "through the same store code: the database's and driver's share alone. One Python process (one core); "
        "PostgreSQL's server runs on the other core.",
        "",
        "| Database | Readings | Ingest (readings/s) | Ceiling (readings/s) | Ingest / ceiling | Goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    targets = [("SQLite (WAL file)", sqlite_url, "50,000/s")]
    if postgres_available():
        targets.append(("PostgreSQL 15 (loopback)", postgres_url, "25,000/s"))
    results = []
    for label, make_url, goal in targets:
        result = measure(make_url, meters, per_meter)
        results.append((label, goal, result))
        ratio = result["ingest"] / result["ceiling"]
        lines.append(
            f"| {label} | {result['readings']:,.0f} | {result['ingest']:,.0f} | {result['ceiling']:,.0f} | "
            f"{ratio:.0%} | {goal}, >= 40% of ceiling |"
        )
    if not postgres_available():
        lines.append("| PostgreSQL | - | not measured: server not reachable at 127.0.0.1:5432 | | | |")
    lines += [
        "",
        "Where the time goes, in microseconds per reading (medians). *Ledger*: entries, postings and balance "
        "updates; *readings*: the reading rows alone (two indexes: the id and (meter, time)); *states*: the "
        "meters' rating states; *Python*: everything ingest does outside those writes (duplicate lookup, meters "
        "and states read, rating, building the rows). *Budget*: what the goal allows per reading.",
        "",
        "| Database | Ledger | Readings | States | Commit | Python (ingest - ceiling) | Ingest total | Budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, goal, result in results:
        total = 1e6 / result["ingest"]
        python = total - 1e6 / result["ceiling"]
        budget = 1e6 / int(goal.split("/")[0].replace(",", ""))
        lines.append(
            f"| {label} | {result['us_ledger']:.1f} | {result['us_readings']:.1f} | {result['us_states']:.1f} | "
            f"{result['us_commit']:.1f} | {python:.1f} | {total:.1f} | {budget:.0f} |"
        )
    return "\n".join(lines)
