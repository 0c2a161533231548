"""Daily freeze, catch-up and the run-once job claim, on SQLite and PostgreSQL.

A small world: two meters on the commercial TOU tariff in Asia/Shanghai, each with a wallet. Readings are
written straight into ``readings`` (as ingest stores them) so each test states exactly what the meter said.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert, select

from powergate.domain.ledger import charge_entry, recharge_entry, refund_entry, wallet_code
from powergate.services import freeze
from powergate.store import ledger as ledger_store
from powergate.store.metering import add_meter, add_tariff
from powergate.store.tables import readings
from powergate.store.tables_freeze import daily_freezes, job_runs

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
TZ = "Asia/Shanghai"
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
TOU = (Path(__file__).parents[2] / "docs/examples/tariffs/commercial-tou.toml").read_text()
DAY = dt.date(2026, 3, 10)


def local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=SHANGHAI)


def setup_meters(engine: Engine, count: int = 2) -> list[str]:
    with engine.begin() as conn:
        add_tariff(conn, "commercial-tou", "Commercial TOU", "electricity", TOU, T0)
        names = []
        for index in range(count):
            wallet = wallet_code(f"A{index}")
            wallet_id = ledger_store.ensure_account(conn, wallet, T0)
            add_meter(conn, f"M{index}", wallet_id, "commercial-tou", T0, timezone=TZ)
            names.append(f"M{index}")
    return names


def add_reading(
    conn: Connection,
    meter: str,
    at: dt.datetime,
    total_wh: int,
    bands_wh: tuple[int, int, int, int] | None,
    amount_micros: int | None,
    *,
    reading_id: str | None = None,
    status: str = "rated",
) -> None:
    sharp, peak, flat, valley = bands_wh or (None, None, None, None)
    conn.execute(
        insert(readings).values(
            id=reading_id or f"{meter}@{int(at.timestamp())}",
            meter_id=meter,
            at=at,
            total_wh=total_wh,
            sharp_wh=sharp,
            peak_wh=peak,
            flat_wh=flat,
            valley_wh=valley,
            status=status,
            amount_micros=amount_micros,
            received_at=at,
        )
    )


def frozen(engine: Engine, day: dt.date) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(daily_freezes).where(daily_freezes.c.day == day)).mappings().all()
    return {str(row["meter_id"]): dict(row) for row in rows}


def test_a_meter_frozen_at_midnight_has_exact_registers_energy_cost_and_balance(engine: Engine) -> None:
    setup_meters(engine, 1)
    with engine.begin() as conn:
        ledger_store.post(conn, recharge_entry("pay-1", wallet_code("A0"), "sandbox", 100_000_000, local(DAY, 9)), T0)
        add_reading(conn, "M0", local(DAY, 0), 10_000, (0, 1_000, 4_000, 5_000), None, reading_id="M0@frozen@1")
        add_reading(conn, "M0", local(DAY, 12), 13_000, (0, 2_000, 6_000, 5_000), 1_750_000)
        charge = charge_entry("reading:M0@noon", wallet_code("A0"), {"energy": 1_750_000}, local(DAY, 12))
        assert charge is not None
        ledger_store.post(conn, charge, T0)
        add_reading(conn, "M0", local(DAY + dt.timedelta(days=1), 0), 14_000, (0, 2_000, 6_000, 6_000), 310_000)
        # After the cut: neither its energy nor its charge belongs to the day.
        add_reading(conn, "M0", local(DAY + dt.timedelta(days=1), 1), 15_000, (0, 2_000, 6_000, 7_000), 310_000)
        late = charge_entry(
            "reading:M0@late", wallet_code("A0"), {"energy": 310_000}, local(DAY, 23, 30) + dt.timedelta(hours=2)
        )
        assert late is not None
        ledger_store.post(conn, late, T0)

    run = freeze.daily_freeze(engine, TZ, DAY, local(DAY, 0) + dt.timedelta(days=2))

    assert run.ran and run.meters == 1 and run.estimated == 0
    row = frozen(engine, DAY)["M0"]
    assert (row["total_wh"], row["valley_wh"], row["energy_wh"]) == (14_000, 6_000, 4_000)
    # The first reading of the day is the baseline (there is no reading before it).
    assert (row["peak_energy_wh"], row["flat_energy_wh"], row["valley_energy_wh"]) == (1_000, 2_000, 1_000)
    assert row["cost_micros"] == 2_060_000
    band_costs = [row[f"{b}_cost_micros"] for b in freeze.BANDS]
    assert sum(band_costs) == 2_060_000  # type: ignore[arg-type]
    assert row["balance_micros"] == 100_000_000 - 1_750_000
    assert row["estimated"] is False


def test_a_meter_read_either_side_of_midnight_is_interpolated_and_flagged(engine: Engine) -> None:
    setup_meters(engine, 1)
    with engine.begin() as conn:
        add_reading(conn, "M0", local(DAY, 23), 1_000, None, None)
        add_reading(conn, "M0", local(DAY + dt.timedelta(days=1), 1), 3_000, None, 500_000)

    run = freeze.daily_freeze(engine, TZ, DAY, local(DAY, 0) + dt.timedelta(days=2))

    row = frozen(engine, DAY)["M0"]
    assert run.estimated == 1 and row["estimated"] is True
    assert (row["total_wh"], row["energy_wh"], row["reading_id"]) == (2_000, 1_000, None)
    assert row["sharp_cost_micros"] is None  # a total-only meter has no band split


@given(
    total=st.integers(0, 10**12),
    weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=6),
)
def test_largest_remainder_shares_add_up_exactly_and_stay_within_one_of_the_proportion(
    total: int, weights: list[int]
) -> None:
    shares = freeze.split_largest_remainder(total, weights)
    assert sum(shares) == total
    whole = sum(weights)
    if whole:
        for share, weight in zip(shares, weights, strict=True):
            assert total * weight // whole <= share <= total * weight // whole + 1


def _fill_day(engine: Engine, meters: list[str], day: dt.date, base_wh: int) -> None:
    with engine.begin() as conn:
        for index, meter in enumerate(meters):
            at = local(day + dt.timedelta(days=1), 0)
            step = 1_000 * (index + 1)
            bands = (0, base_wh // 4 + step // 3, base_wh // 4 + step // 3, base_wh // 2 + step - 2 * (step // 3))
            add_reading(
                conn,
                meter,
                at,
                sum(bands),
                bands,
                777_777 * (index + 1),
                reading_id=f"{meter}@frozen@{int(at.timestamp())}",
            )


@pytest.mark.parametrize("workers", [4])
def test_two_workers_freezing_the_same_day_at_once_freeze_it_once(engine: Engine, workers: int) -> None:
    meters = setup_meters(engine, 3)
    _fill_day(engine, meters, DAY - dt.timedelta(days=1), 0)
    _fill_day(engine, meters, DAY, 10_000)
    now = local(DAY, 0) + dt.timedelta(days=1, minutes=5)
    runs: list[freeze.FreezeRun] = []
    barrier = threading.Barrier(workers)

    def worker(name: str) -> None:
        barrier.wait()
        runs.append(freeze.daily_freeze(engine, TZ, DAY, now, owner=name, batch_size=1))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(runs) == workers
    assert sum(1 for run in runs if run.ran) == 1
    assert {run.claim for run in runs if not run.ran} <= {freeze.Claim.RUNNING, freeze.Claim.DONE}
    assert len(frozen(engine, DAY)) == 3
    again = freeze.daily_freeze(engine, TZ, DAY, now + dt.timedelta(hours=1))
    assert again.claim is freeze.Claim.DONE


def test_a_run_whose_worker_crashed_is_taken_over_after_its_lease_and_redone_whole(engine: Engine) -> None:
    meters = setup_meters(engine, 2)
    _fill_day(engine, meters, DAY, 10_000)
    now = local(DAY, 0) + dt.timedelta(days=1, minutes=5)
    period = f"timezone:{TZ}:{DAY.isoformat()}"
    # A worker claimed the run and died after writing a wrong row for one meter.
    assert freeze.claim(engine, freeze.JOB_DAILY, period, "dead-worker", now) is freeze.Claim.CLAIMED
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO daily_freezes (day, meter_id, wallet_account_id, frozen_at, total_wh, energy_wh,"
            " cost_micros, balance_micros, estimated, created_at)"
            " SELECT '2026-03-10', id, wallet_account_id, '2026-03-10 16:00:00', 1, 1, 1, 1, true,"
            " '2026-03-10 16:00:00'"
            " FROM meters WHERE id = 'M0'"
        )

    during = freeze.daily_freeze(engine, TZ, DAY, now + dt.timedelta(minutes=1), owner="w2")
    after = freeze.daily_freeze(engine, TZ, DAY, now + freeze.LEASE + dt.timedelta(seconds=1), owner="w2")

    assert during.claim is freeze.Claim.RUNNING
    assert after.claim is freeze.Claim.TAKEN_OVER and after.meters == 2
    rows = frozen(engine, DAY)
    assert rows["M0"]["total_wh"] == 10_000 + 1_000 and rows["M0"]["estimated"] is False
    with engine.connect() as conn:
        run = conn.execute(select(job_runs)).mappings().one()
    assert (run["owner"], run["attempts"]) == ("w2", 2) and run["finished_at"] is not None


def test_catch_up_runs_every_missed_day_oldest_first_and_then_nothing(engine: Engine) -> None:
    meters = setup_meters(engine, 2)
    for offset in range(-1, 4):
        _fill_day(engine, meters, DAY + dt.timedelta(days=offset), 10_000 * (offset + 2))
    assert freeze.daily_freeze(engine, TZ, DAY - dt.timedelta(days=1), local(DAY, 1)).ran
    # Down for three midnights: back at 03:00 on the 4th day.
    back = local(DAY + dt.timedelta(days=3), 3)

    runs = freeze.catch_up(engine, back)

    assert [run.period[-10:] for run in runs] == ["2026-03-10", "2026-03-11", "2026-03-12"]
    assert all(run.ran and run.meters == 2 for run in runs)
    energies = [frozen(engine, DAY + dt.timedelta(days=d))["M1"]["energy_wh"] for d in range(3)]
    assert energies == [10_000, 10_000, 10_000]
    assert freeze.catch_up(engine, back + dt.timedelta(hours=1)) == []


def test_a_day_that_has_not_ended_is_not_frozen(engine: Engine) -> None:
    setup_meters(engine, 1)
    run = freeze.daily_freeze(engine, TZ, DAY, local(DAY, 23, 59))
    assert run.claim is None and "has not ended" in run.problems[0]


def test_per_band_costs_add_up_to_the_days_cost_for_every_meter(engine: Engine) -> None:
    meters = setup_meters(engine, 5)
    _fill_day(engine, meters, DAY - dt.timedelta(days=1), 3_333)
    _fill_day(engine, meters, DAY, 17_777)
    freeze.daily_freeze(engine, TZ, DAY, local(DAY, 0) + dt.timedelta(days=2))
    rows = frozen(engine, DAY)
    assert len(rows) == 5
    for row in rows.values():
        assert sum(row[f"{b}_cost_micros"] for b in freeze.BANDS) == row["cost_micros"]  # type: ignore[misc]
        assert row["cost_micros"] == 777_777 * (int(str(row["meter_id"])[1:]) + 1)


def test_the_monthly_settlement_ties_out_to_the_ledger(engine: Engine) -> None:
    setup_meters(engine, 2)
    month = dt.date(2026, 3, 1)
    wallet = wallet_code("A0")
    with engine.begin() as conn:
        ledger_store.post(
            conn, recharge_entry("pay-feb", wallet, "sandbox", 50_000_000, local(dt.date(2026, 2, 20), 9)), T0
        )
        ledger_store.post(conn, recharge_entry("pay-mar", wallet, "sandbox", 30_000_000, local(DAY, 9)), T0)
        charge = charge_entry("reading:x", wallet, {"energy": 12_345_678}, local(DAY, 10))
        assert charge is not None
        ledger_store.post(conn, charge, T0)
        ledger_store.post(conn, refund_entry("refund-1", wallet, "sandbox", 1_000_000, local(DAY, 11)), T0)
        # April: outside the month, in the closing balance only of later months.
        ledger_store.post(
            conn, recharge_entry("pay-apr", wallet, "sandbox", 7_000_000, local(dt.date(2026, 4, 2), 9)), T0
        )

    result = freeze.monthly_settlement(engine, TZ, month, local(dt.date(2026, 4, 3), 0))

    assert result.problems == []
    line = {s.wallet_account_id: s for s in result.settlements}
    with engine.connect() as conn:
        wallet_id = ledger_store.ensure_account(conn, wallet, T0)
        current = ledger_store.balance(conn, wallet).balance_micros
    settled = line[wallet_id]
    assert (settled.opening_micros, settled.recharges_micros, settled.deductions_micros) == (
        50_000_000,
        30_000_000,
        12_345_678,
    )
    assert settled.refunds_micros == 1_000_000
    assert settled.closing_micros == current - 7_000_000
    assert (
        settled.opening_micros
        + settled.recharges_micros
        - settled.deductions_micros
        - settled.refunds_micros
        + settled.adjustments_micros
        == settled.closing_micros
    )
