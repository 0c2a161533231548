"""Daily freeze speed: every meter of a time zone frozen for one day, on SQLite (goal: 100,000 meters <= 30 s).

The database is filled with bulk inserts (not through ingest, which would take far longer than the freeze):
one TOU tariff, a wallet with a recharge per meter, and per meter the frozen reading at the previous midnight,
a midday reading and the frozen reading at midnight (all with band registers), plus, for one meter in ten, no
midnight reading but readings at 23:30 and 00:30, so a tenth of the fleet is interpolated. The previous day is
not frozen, so every meter also looks its start-of-day register up. The figure is the median of 3 runs; each
run starts from no freeze (rows and job run deleted). Quick mode: 10,000 meters.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine

from powergate.services import freeze
from powergate.store.db import make_engine, upgrade

RUNS = 3
TZ = "Asia/Shanghai"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
DAY = dt.date(2026, 3, 10)
TOU = (Path(__file__).parents[1] / "docs/examples/tariffs/commercial-tou.toml").read_text()
CHUNK = 20_000


def _ts(day: dt.date, hour: int, minute: int = 0) -> str:
    local = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=SHANGHAI)
    return local.astimezone(dt.UTC).isoformat(sep=" ", timespec="microseconds")[:26]


def _fill(engine: Engine, meters: int) -> None:
    created = _ts(DAY, 0)
    start, noon, cut = _ts(DAY, 0), _ts(DAY, 12), _ts(DAY + dt.timedelta(days=1), 0)
    before, after = _ts(DAY, 23, 30), _ts(DAY + dt.timedelta(days=1), 0, 30)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN")
        cursor.execute(
            "INSERT INTO tariffs (id, name, commodity, document, created_at) VALUES (?, ?, ?, ?, ?)",
            ("tou", "TOU", "electricity", TOU, created),
        )
        cursor.executemany(
            "INSERT INTO ledger_accounts (id, code, kind, currency, overdraft_limit_micros, balance_micros,"
            " created_at) VALUES (?, ?, 'wallet', 'CNY', 0, ?, ?)",
            [(i + 1, f"wallet:B{i}", 50_000_000, created) for i in range(meters)],
        )
        cursor.executemany(
            "INSERT INTO meters (id, wallet_account_id, tariff_id, timezone, created_at) VALUES (?, ?, 'tou', ?, ?)",
            [(f"M{i:06d}", i + 1, TZ, created) for i in range(meters)],
        )
        rows = []
        for i in range(meters):
            meter = f"M{i:06d}"
            base = 1_000 * i
            rows.append((f"{meter}@frozen@0", meter, start, base + 4_000, 0, 1_000, 1_000, 2_000, None))
            rows.append((f"{meter}@noon", meter, noon, base + 6_000, 0, 1_500, 2_000, 2_500, 800_000))
            if i % 10 == 0:
                rows.append((f"{meter}@b", meter, before, base + 7_000, 0, 2_000, 2_000, 3_000, 400_000))
                rows.append((f"{meter}@a", meter, after, base + 7_400, 0, 2_000, 2_000, 3_400, 120_000))
            else:
                rows.append((f"{meter}@frozen@1", meter, cut, base + 7_200, 0, 2_000, 2_200, 3_000, 500_000))
        statement = (
            "INSERT INTO readings (id, meter_id, at, total_wh, sharp_wh, peak_wh, flat_wh, valley_wh, status,"
            " amount_micros, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'rated', ?, ?)"
        )
        for offset in range(0, len(rows), CHUNK):
            cursor.executemany(statement, [(*row, row[2]) for row in rows[offset : offset + CHUNK]])
        cursor.execute("COMMIT")
    finally:
        raw.close()


def _one_run(engine: Engine, meters: int) -> float:
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM daily_freezes")
        conn.exec_driver_sql("DELETE FROM job_runs")
    now = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(0, 5), tzinfo=SHANGHAI)
    started = time.perf_counter()
    run = freeze.daily_freeze(engine, TZ, DAY, now)
    elapsed = time.perf_counter() - started
    assert run.ran and run.meters == meters, run
    return elapsed


def run(quick: bool) -> str:
    meters = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/freeze.db"
        upgrade(url)
        engine = make_engine(url)
        try:
            fill_started = time.perf_counter()
            _fill(engine, meters)
            fill_s = time.perf_counter() - fill_started
            figures = [_one_run(engine, meters) for _ in range(RUNS)]
        finally:
            engine.dispose()
    median = statistics.median(figures)
    verdict = "meets" if median * (100_000 / meters) <= 30 else "misses"
    return "\n".join(
        [
            "## Daily freeze (SQLite)",
            "",
            f"{meters:,} meters, {RUNS} runs, batches of {freeze.BATCH_METERS:,} meters; a tenth interpolated.",
            "",
            "| meters | median s | min s | max s | meters/s | fill s |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {meters:,} | {median:.2f} | {min(figures):.2f} | {max(figures):.2f} | {meters / median:,.0f} |"
            f" {fill_s:.1f} |",
            "",
            f"Goal: 100,000 meters in <= 30 s; this run {verdict} it"
            + (" (extrapolated linearly from quick mode)." if quick else "."),
            "",
        ]
    )
