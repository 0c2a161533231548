"""The run-out forecast of a new account (no frozen day yet) comes from its readings so far and says it is an
early estimate; SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from powergate.domain.forecast import DEFAULT_FLOOR_MICROS_PER_DAY, Forecast
from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.domain.rating import Reading
from powergate.services.forecast import wallet_forecast
from powergate.services.ingest import Ingestor
from powergate.store import ledger as ledger_store
from powergate.store import metering

YUAN = 1_000_000
TZ = ZoneInfo("Asia/Shanghai")
OPENED = dt.datetime(2026, 11, 20, 8, 0, tzinfo=TZ).astimezone(dt.UTC)
HEAD = 'id = "t"\nname = "t"\ncommodity = "electricity"\ncurrency = "CNY"\n'
FLAT = HEAD + '[[versions]]\neffective_from = "2020-01-01"\nprice = "1.5000"\n'
TOU = (
    HEAD
    + """
[[versions]]
effective_from = "2020-01-01"
[versions.tou.prices]
sharp = "1.5000"
peak = "1.2000"
flat = "0.8000"
valley = "0.4000"
[[versions.tou.seasons]]
name = "all year"
months = "1-12"
schedule = [
  { start = "00:00", end = "08:00", band = "valley" },
  { start = "08:00", end = "18:00", band = "peak" },
  { start = "18:00", end = "20:00", band = "sharp" },
  { start = "20:00", end = "24:00", band = "flat" },
]
"""
)


def open_wallet(engine: Engine, document: str, paid_yuan: int) -> int:
    with engine.begin() as conn:
        metering.add_tariff(conn, "t", "t", "electricity", document, OPENED)
        wallet_id = ledger_store.ensure_account(conn, wallet_code("A-1"), OPENED)
        metering.add_meter(conn, "M-1", wallet_id, "t", OPENED)
        ledger_store.post(conn, recharge_entry("cash:1", wallet_code("A-1"), "cash", paid_yuan * YUAN, OPENED), OPENED)
    return wallet_id


def forecast_of(engine: Engine, wallet_id: int) -> Forecast:
    with engine.connect() as conn:
        return wallet_forecast(conn, wallet_id)


def test_a_new_account_is_forecast_from_its_readings_so_far_as_an_early_estimate(engine: Engine) -> None:
    wallet_id = open_wallet(engine, FLAT, 42)
    nothing_yet = forecast_of(engine, wallet_id)
    assert nothing_yet.rate_micros_per_day == DEFAULT_FLOOR_MICROS_PER_DAY and not nothing_yet.early_estimate
    ingestor = Ingestor(engine, clock=lambda: OPENED)
    # 4 kWh in 6 hours at 1.50 yuan: 6 yuan, 24 yuan a day; 42 - 6 = 36 yuan left, a day and a half
    ingestor.ingest([Reading(f"r{h}", "M-1", OPENED + dt.timedelta(hours=h), 100_000 + h * 2_000 // 3) for h in (0, 3)])
    ingestor.ingest([Reading("r6", "M-1", OPENED + dt.timedelta(hours=6), 104_000)])
    result = forecast_of(engine, wallet_id)
    assert result.early_estimate and result.rate_micros_per_day == 24 * YUAN
    assert result.seconds_left == 36 * 86_400 // 24
    assert (result.text("en"), result.text("zh")) == ("about 36 hours left (early estimate)", "约 36 小时（初步估算）")


def test_band_registers_are_priced_per_band_at_the_current_tou_prices(engine: Engine) -> None:
    wallet_id = open_wallet(engine, TOU, 100)
    ingestor = Ingestor(engine, clock=lambda: OPENED)
    start = OPENED + dt.timedelta(hours=4)  # 12:00 local
    first = Reading("a", "M-1", start, 10_000, (0, 5_000, 0, 5_000))
    # 12 hours: 2 kWh peak, 1 kWh sharp, 1 kWh flat (a day: 2 x (2.4 + 1.5 + 0.8) = 9.40 yuan)
    last = Reading("b", "M-1", start + dt.timedelta(hours=12), 14_000, (1_000, 7_000, 1_000, 5_000))
    ingestor.ingest([first, last])
    result = forecast_of(engine, wallet_id)
    assert result.early_estimate and result.rate_micros_per_day == 9_400_000


def test_one_reading_is_not_enough_to_estimate(engine: Engine) -> None:
    wallet_id = open_wallet(engine, FLAT, 10)
    Ingestor(engine, clock=lambda: OPENED).ingest([Reading("r0", "M-1", OPENED, 100_000)])
    result = forecast_of(engine, wallet_id)
    assert not result.early_estimate and result.rate_micros_per_day == DEFAULT_FLOOR_MICROS_PER_DAY
    assert result.text("en") == "about 100 days left"
