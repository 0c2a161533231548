"""Two writers, one meter: with ``skip_busy`` a batch does not wait for a meter another transaction is rating;
it leaves that meter's readings for a pass of their own, and every reading is still booked exactly once."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select
from test_ingest import NOW, contexts, reading, setup_meters

from powergate.domain.ledger import wallet_code
from powergate.services.ingest import Ingestor
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import readings


def test_a_meter_another_transaction_holds_is_left_for_later_and_then_booked_once(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no other transaction can hold a meter while we ingest")
    setup_meters(engine, 3)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    ingestor.ingest([reading(m, 0, 1000_00) for m in range(3)])  # every meter has a rating state now

    with engine.connect() as holder:
        holder.begin()
        metering.lock_states(holder, ["M-1"])  # another head-end rating meter 1 right now
        batch = [reading(m, 1, 1010_00, hour=1) for m in range(3)] + [reading(2, 2, 1020_00, hour=2)]
        with engine.begin() as conn:
            report = ingestor.ingest_in(conn, batch, skip_busy=True)
        assert [r.reading_id for r in report.busy] == ["M-1:1"]
        assert (report.rated, report.duplicates) == (3, 0)
        holder.rollback()

    rest = ingestor.ingest(report.busy)
    report.absorb(rest)
    assert (report.rated, report.busy) == (4, [])
    with engine.begin() as conn:
        again = ingestor.ingest_in(conn, batch, skip_busy=True)
    assert (again.rated, again.duplicates, again.busy) == (0, 4, [])

    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []
        assert conn.execute(select(func.count()).select_from(readings)).scalar_one() == 7
        for meter, kwh in ((0, 10), (1, 10), (2, 20)):
            balance = ledger_store.balance(conn, wallet_code(f"A-{meter}")).balance_micros
            assert balance == -kwh * 1_000_000, (meter, balance)


def test_without_skip_busy_nothing_is_left_out(engine: Engine) -> None:
    setup_meters(engine, 2)
    ingestor = Ingestor(engine, contexts(), clock=lambda: NOW)
    first = ingestor.ingest([reading(m, 0, 1000_00) for m in range(2)])
    report = ingestor.ingest([reading(m, 1, 1005_00, hour=1) for m in range(2)])
    assert (first.rated, report.rated, report.busy) == (0, 2, [])
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []


def test_a_meter_with_no_state_yet_is_not_busy(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's")
    setup_meters(engine, 1)
    with engine.connect() as other:
        other.begin()
        metering.lock_states(other, ["M-0"])  # locks nothing: meter 0 has never been rated
        with engine.begin() as conn:
            assert metering.lock_states(conn, ["M-0"], skip_busy=True) == frozenset()
        other.rollback()
