"""Daily reconciliation on SQLite and PostgreSQL: a day of recharges, deductions (through ``Ingestor``) and
refunds ties out exactly; a ledger changed behind the platform's back makes ``powergate reconcile`` exit 1
naming what is wrong.

The day, in Asia/Shanghai (wallet A-0, meter M-0 at 1 yuan/kWh)::

    11-20 10:00  recharge 100.00     (before the day: the opening balance)
    11-20 23:00  reading 1000.00 kWh (the first reading: the baseline, no charge)
    11-21 07:00  recharge  50.00     (23:00 UTC on the 20th: the site's day, not UTC's)
    11-21 08:00  reading 1010.00 kWh -> deduction 10.00
    11-21 15:00  refund    20.00
    11-21 20:00  reading 1015.50 kWh -> deduction  5.50
    11-22 10:00  recharge  30.00     (after the day)
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, select, text

from powergate.cli import main
from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.ledger import recharge_entry, refund_entry, wallet_code
from powergate.domain.money import MICROS_PER_UNIT
from powergate.domain.rating import RatingContext, Reading
from powergate.domain.tariff import Tariff, TariffVersion, TierBlock, TierMode, Tiers
from powergate.services.ingest import Ingestor, RatingContexts
from powergate.services.reconcile import Flow, reconcile, render
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.metering import MeterRow
from powergate.store.tables import ledger_accounts, ledger_entries, ledger_postings

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 21)
YUAN = MICROS_PER_UNIT
WALLET = wallet_code("A-0")
FLAT = Tariff(
    id="flat-1",
    name="1 yuan/kWh",
    commodity=Commodity.ELECTRICITY,
    currency="CNY",
    versions=(
        TariffVersion(
            effective_from=dt.datetime(2020, 1, 1),
            tiers=Tiers(TierMode.PRICE, (TierBlock(None, 1_000_000),)),
        ),
    ),
)


def local(day: int, hour: int) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, 0, tzinfo=SHANGHAI).astimezone(dt.UTC)


RECORDED = local(23, 9)


def contexts() -> RatingContexts:
    def build(_conn: Connection, meter: MeterRow) -> RatingContext:
        return RatingContext(FLAT, SiteCalendar.china(), ZoneInfo(meter.timezone))

    return RatingContexts(build)


def a_day(engine: Engine) -> None:
    with engine.begin() as conn:
        metering.add_tariff(conn, FLAT.id, FLAT.name, "electricity", "{}", RECORDED)
        wallet_id = ledger_store.ensure_account(conn, WALLET, RECORDED)
        metering.add_meter(conn, "M-0", wallet_id, FLAT.id, RECORDED)
        for key, yuan, at in (("pay-1", 100, local(20, 10)), ("pay-2", 50, local(21, 7)), ("pay-3", 30, local(22, 10))):
            ledger_store.post(conn, recharge_entry(key, WALLET, "wechat", yuan * YUAN, at), RECORDED)
        ledger_store.post(conn, refund_entry("refund-1", WALLET, "wechat", 20 * YUAN, local(21, 15)), RECORDED)
    readings = [
        Reading("M-0:1", "M-0", local(20, 23), 1_000_000),
        Reading("M-0:2", "M-0", local(21, 8), 1_010_000),
        Reading("M-0:3", "M-0", local(21, 20), 1_015_500),
    ]
    report = Ingestor(engine, contexts(), clock=lambda: RECORDED).ingest(readings)
    assert (report.rated, report.skipped) == (2, 1)


def test_a_day_of_recharges_deductions_and_refunds_ties_out_exactly(engine: Engine) -> None:
    a_day(engine)
    with engine.connect() as conn:
        report = reconcile(conn, DAY, "Asia/Shanghai")
    assert report.discrepancies == []
    expected = Flow(WALLET, "(no site)", 100 * YUAN, 50 * YUAN, 15_500_000, 20 * YUAN, 0, 114_500_000)
    assert report.wallets == [expected]
    assert [(s.subject, s.closing_micros) for s in report.sites] == [("site (no site)", 114_500_000)]
    assert "reconciliation ok" in render(report)


def test_the_day_is_the_sites_day_not_utcs(engine: Engine) -> None:
    a_day(engine)
    with engine.connect() as conn:
        utc_day = reconcile(conn, DAY, "UTC")
    assert utc_day.ok
    # 07:00 in Shanghai on the 21st is 23:00 UTC on the 20th: in UTC's day it is part of the opening balance
    assert utc_day.wallets[0].opening_micros == 150 * YUAN
    assert utc_day.wallets[0].payments_micros == 0


def posting_of(conn: Connection, key: str) -> int:
    query = (
        select(ledger_postings.c.id)
        .join(ledger_entries, ledger_entries.c.id == ledger_postings.c.entry_id)
        .join(ledger_accounts, ledger_accounts.c.id == ledger_postings.c.account_id)
        .where(ledger_entries.c.idempotency_key == key, ledger_accounts.c.code == WALLET)
    )
    return int(conn.execute(query).scalar_one())


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (
            "refund-1",
            ["DISCREPANCY entry", "DISCREPANCY wallet:A-0: stored balance 144.50 but the journal gives 144.51"],
        ),
        ("reading:M-0:2", ["DISCREPANCY reading M-0:2 (entry reading:M-0:2): charged 10.00 but its entry takes 9.99"]),
    ],
)
def test_a_posting_changed_by_sql_makes_the_command_exit_1_naming_it(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str], key: str, named: list[str]
) -> None:
    a_day(engine)
    assert main(["reconcile", "--url", db_url, "--date", DAY.isoformat()]) == 0
    assert "reconciliation ok" in capsys.readouterr().out
    with engine.begin() as conn:
        posting = posting_of(conn, key)
        conn.execute(text(f"UPDATE ledger_postings SET amount_micros = amount_micros + 10000 WHERE id = {posting}"))
    assert main(["reconcile", "--url", db_url, "--date", DAY.isoformat()]) == 1
    out = capsys.readouterr().out
    for line in named:
        assert line in out
    assert "reconciliation FAILED" in out


def test_a_balance_changed_without_a_posting_is_named(engine: Engine) -> None:
    a_day(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE ledger_accounts SET balance_micros = balance_micros + 1 WHERE code = '{WALLET}'"))
    with engine.connect() as conn:
        report = reconcile(conn, DAY, "Asia/Shanghai")
    subjects = [d.subject for d in report.discrepancies]
    assert f"account {WALLET}" in subjects and WALLET in subjects


def test_an_unknown_date_or_time_zone_is_refused(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--url", db_url, "--date", "2026-11-21", "--timezone", "Mars/Olympus"]) == 2
    assert "--timezone" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reconcile", "--url", db_url, "--date", "21/11/2026"])


def test_a_meter_side_meter_whose_count_disagrees_is_named_in_the_report(engine: Engine) -> None:
    from powergate.headend.model import MeterSnapshot
    from powergate.services import meterside

    a_day(engine)
    with engine.begin() as conn:
        meterside.enrol(conn, "M-0", 2, local(20, 9))
        told = MeterSnapshot("M-0", local(21, 12), remaining_micros=144 * YUAN, purchase_count=2)
        assert meterside.mirror(conn, [told], local(21, 12)) == []
    with engine.connect() as conn:
        agreeing = reconcile(conn, DAY, "Asia/Shanghai")
    assert agreeing.ok, agreeing.discrepancies
    assert agreeing.meter_side[0].platform_view_micros == 144_500_000  # the ledger as it stands now
    with engine.begin() as conn:
        ahead = MeterSnapshot("M-0", local(21, 13), remaining_micros=144 * YUAN, purchase_count=5)
        meterside.mirror(conn, [ahead], local(21, 13))
    with engine.connect() as conn:
        report = reconcile(conn, DAY, "Asia/Shanghai")
    assert [d.subject for d in report.discrepancies] == ["meter:M-0", "meter:M-0"]
    assert "purchase count 5 on the meter" in report.discrepancies[0].message
    assert "alarm purchase_count_ahead" in report.discrepancies[1].message
