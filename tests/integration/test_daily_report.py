"""The daily report adds up the day's freeze and the day's recharges, and refuses a day not yet frozen."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine
from test_freeze import DAY, T0, TZ, add_reading, local, setup_meters

from powergate.cli import main
from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.services import freeze
from powergate.services.daily_report import NotFrozen, daily_report, export_xlsx, render
from powergate.store import ledger as ledger_store


def fill(engine: Engine) -> None:
    setup_meters(engine, 2)
    with engine.begin() as conn:
        for index in range(2):
            meter, wallet = f"M{index}", wallet_code(f"A{index}")
            ledger_store.post(conn, recharge_entry(f"pay-{index}", wallet, "sandbox", 30_000_000, local(DAY, 9)), T0)
            add_reading(conn, meter, local(DAY, 0), 10_000, (0, 1_000, 4_000, 5_000), None, reading_id=f"{meter}@f0")
            add_reading(conn, meter, local(DAY, 12), 13_000, (0, 2_000, 6_000, 5_000), 1_750_000)
            charge = charge_entry(f"reading:{meter}@noon", wallet, {"energy": 1_750_000}, local(DAY, 12))
            assert charge is not None
            ledger_store.post(conn, charge, T0)
            next_midnight = local(DAY + dt.timedelta(days=1), 0)
            add_reading(conn, meter, next_midnight, 14_000, (0, 2_000, 6_000, 6_000), 310_000)
        # a recharge the day after is not the day's
        ledger_store.post(
            conn,
            recharge_entry("pay-late", wallet_code("A0"), "sandbox", 5_000_000, local(DAY, 9) + dt.timedelta(days=1)),
            T0,
        )


def test_the_report_adds_up_the_freeze_and_the_days_recharges(engine: Engine, tmp_path: Path) -> None:
    fill(engine)
    with engine.connect() as conn, pytest.raises(NotFrozen, match="no freeze yet"):
        daily_report(conn, TZ, DAY)
    freeze.daily_freeze(engine, TZ, DAY, local(DAY, 0) + dt.timedelta(days=2))
    with engine.connect() as conn:
        report = daily_report(conn, TZ, DAY)
    assert len(report.lines) == 2
    assert report.energy_wh == 2 * 4_000
    assert report.bands_wh == (0, 2 * 1_000, 2 * 2_000, 2 * 1_000)
    assert report.cost_micros == 2 * 2_060_000
    assert (report.recharges_micros, report.recharge_count) == (60_000_000, 2)
    assert report.low_balance == 0 and report.estimated == 0
    text = render(report)
    assert "energy            8.00 kWh" in text and "recharges         60.00 in 2 payments" in text
    export_xlsx(report, tmp_path / "daily.xlsx")
    book = load_workbook(tmp_path / "daily.xlsx")
    assert book["meters"].max_row == 3
    assert dict(book["summary"].iter_rows(values_only=True))["cost"] == pytest.approx(4.12)


def test_the_report_command_prints_the_report_and_fails_clearly_before_the_freeze(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'pg.db'}"
    upgrade(url)
    engine = make_engine(url)
    fill(engine)
    assert main(["report", "--url", url, "daily", "--date", DAY.isoformat()]) == 1
    assert "no freeze yet" in capsys.readouterr().err
    freeze.daily_freeze(engine, TZ, DAY, local(DAY, 0) + dt.timedelta(days=2))
    engine.dispose()
    xlsx = tmp_path / "r.xlsx"
    assert main(["report", "--url", url, "daily", "--date", DAY.isoformat(), "--xlsx", str(xlsx)]) == 0
    assert "meters            2" in capsys.readouterr().out and xlsx.exists()
