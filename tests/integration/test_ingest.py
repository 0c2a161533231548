"""Ingest on SQLite and PostgreSQL: readings become exact deductions, once, in one transaction per batch."""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, func, select

from powergate.domain.calendar import SiteCalendar
from powergate.domain.energy import Commodity
from powergate.domain.ledger import wallet_code
from powergate.domain.rating import RatingContext, Reading
from powergate.domain.tariff import Tariff, TariffVersion, TierBlock, TierMode, Tiers
from powergate.services.ingest import Ingestor, RatingContexts
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.metering import MeterRow
from powergate.store.tables import readings

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")

TIERED = Tariff(
    id="res-tiered",
    name="1 yuan/kWh to 100 kWh a month, 1.5 above",
    commodity=Commodity.ELECTRICITY,
    currency="CNY",
    versions=(
        TariffVersion(
            effective_from=dt.datetime(2020, 1, 1),
            tiers=Tiers(TierMode.PRICE, (TierBlock(100_000, 1_000_000), TierBlock(None, 1_500_000))),
        ),
    ),
)


def contexts() -> RatingContexts:
    def build(_conn: Connection, meter: MeterRow) -> RatingContext:
        return RatingContext(TIERED, SiteCalendar.china(), ZoneInfo(meter.timezone))

    return RatingContexts(build)


def setup_meters(engine: Engine, count: int) -> None:
    with engine.begin() as conn:
        metering.add_tariff(conn, TIERED.id, TIERED.name, "electricity", "{}", NOW)
        for index in range(count):
            wallet_id = ledger_store.ensure_account(conn, wallet_code(f"A-{index}"), NOW)
            metering.add_meter(conn, f"M-{index}", wallet_id, TIERED.id, NOW)


def reading(meter: int, n: int, kwh_centi: int, day: int = 2, hour: int = 0) -> Reading:
    at = dt.datetime(2026, 11, day, hour, 0, tzinfo=SHANGHAI).astimezone(dt.UTC)
    return Reading(f"M-{meter}:{n}", f"M-{meter}", at, kwh_centi * 10)


def wallet_balance(engine: Engine, meter: int) -> int:
    with engine.connect() as conn:
        return ledger_store.balance(conn, wallet_code(f"A-{meter}")).balance_micros


def test_130_kwh_in_a_month_costs_145_yuan_through_several_readings(engine: Engine) -> None:
    setup_meters(engine, 1)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    batch = [reading(0, i, 1000_00 + kwh * 100, hour=i) for i, kwh in enumerate([0, 40, 90, 101, 130])]
    report = ingestor.ingest(batch)
    assert (report.rated, report.skipped, report.quarantined) == (4, 1, 0)
    assert report.charged_micros == 145_000_000
    assert wallet_balance(engine, 0) == -145_000_000
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []
        assert ledger_store.balance(conn, "revenue:tier_energy").balance_micros == 145_000_000


def test_duplicates_and_out_of_order_readings_change_nothing(engine: Engine) -> None:
    setup_meters(engine, 1)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    first = [reading(0, 0, 0, hour=0), reading(0, 2, 5000, hour=2)]
    ingestor.ingest(first)
    balance = wallet_balance(engine, 0)
    late = ingestor.ingest([reading(0, 1, 2000, hour=1), *first, reading(0, 2, 5000, hour=2)])
    assert late.duplicates == 3
    assert late.skipped == 1 and "out of order" in next(iter(late.reasons.values()))
    assert wallet_balance(engine, 0) == balance == -50_000_000
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(readings)).scalar_one() == 3


def test_an_implausible_jump_is_quarantined_with_its_reason_and_not_billed(engine: Engine) -> None:
    setup_meters(engine, 1)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    report = ingestor.ingest([reading(0, 0, 0, hour=0), reading(0, 1, 50_000_00, hour=1)])
    assert report.quarantined == 1
    assert wallet_balance(engine, 0) == 0
    with engine.connect() as conn:
        row = conn.execute(select(readings.c.status, readings.c.reason).where(readings.c.id == "M-0:1")).one()
    assert row.status == "quarantined" and row.reason


def test_a_reading_for_an_unknown_meter_is_rejected_and_the_rest_of_the_batch_lands(engine: Engine) -> None:
    setup_meters(engine, 1)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    stranger = Reading("X:1", "nobody", NOW, 10)
    report = ingestor.ingest([reading(0, 0, 0), stranger, reading(0, 1, 100, hour=1)])
    assert report.rejected == [("X:1", "unknown meter 'nobody'")]
    assert report.rated == 1


def test_two_workers_ingesting_the_same_batch_bill_each_reading_once(engine: Engine) -> None:
    setup_meters(engine, 20)
    batch = [reading(m, n, n * 150, hour=n) for m in range(20) for n in range(6)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(timeout=10)
            Ingestor(engine, contexts(), clock=lambda: NOW).ingest(batch)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    for meter in range(20):
        assert wallet_balance(engine, meter) == -7_500_000
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(min_value=0, max_value=3_000), min_size=2, max_size=12),
    st.randoms(use_true_random=False),
    st.integers(min_value=1, max_value=4),
)
def test_any_batching_order_and_duplication_bills_the_same_total(
    engine: Engine, steps: list[int], rnd: object, copies: int
) -> None:
    import random
    import uuid

    assert isinstance(rnd, random.Random)
    meter_id = f"P-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(metering.tariffs)).scalar_one() == 0:
            metering.add_tariff(conn, TIERED.id, TIERED.name, "electricity", "{}", NOW)
        wallet_id = ledger_store.ensure_account(conn, wallet_code(meter_id), NOW)
        metering.add_meter(conn, meter_id, wallet_id, TIERED.id, NOW)
    total_centi = 0
    sequence = []
    for index, step in enumerate(steps):
        total_centi += step
        at = dt.datetime(2026, 11, 2, tzinfo=SHANGHAI).astimezone(dt.UTC) + dt.timedelta(minutes=30 * index)
        sequence.append(Reading(f"{meter_id}:{index}", meter_id, at, total_centi * 10))
    # Deliver the first reading first (the baseline), then the rest in random batches, shuffled, repeated.
    rest = sequence[1:] * copies
    rnd.shuffle(rest)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    ingestor.ingest([sequence[0]])
    while rest:
        size = rnd.randint(1, len(rest))
        ingestor.ingest(rest[:size])
        rest = rest[size:]
    with engine.connect() as conn:
        balance = ledger_store.balance(conn, wallet_code(meter_id)).balance_micros
        assert ledger_store.audit(conn) == []
    # Whatever the order, what was billed is a prefix of the consumption at the tier prices, never more.
    consumed_wh = (total_centi - 0) * 10
    first_tier = min(consumed_wh, 100_000)
    most = first_tier * 1_000 + max(0, consumed_wh - 100_000) * 1_500
    assert 0 <= -balance <= most


def test_the_stored_tariff_document_is_what_rates_the_readings(engine: Engine) -> None:
    from pathlib import Path

    from powergate.services.ingest import Ingestor as DefaultIngestor

    document = (Path(__file__).parents[2] / "docs/examples/tariffs/tiered-price.json").read_text()
    with engine.begin() as conn:
        metering.add_tariff(conn, "monthly-blocks", "blocks", "electricity", document, NOW)
        wallet_id = ledger_store.ensure_account(conn, wallet_code("A-doc"), NOW)
        metering.add_meter(conn, "M-doc", wallet_id, "monthly-blocks", NOW)
    at = dt.datetime(2026, 11, 2, tzinfo=SHANGHAI).astimezone(dt.UTC)
    batch = [Reading(f"doc:{i}", "M-doc", at + dt.timedelta(hours=i), wh) for i, wh in enumerate([0, 60_000, 130_000])]
    report = DefaultIngestor(engine, clock=lambda: NOW).ingest(batch)
    assert report.rated == 2
    assert report.charged_micros == 145_000_000
    with engine.connect() as conn:
        assert ledger_store.balance(conn, wallet_code("A-doc")).balance_micros == -145_000_000
