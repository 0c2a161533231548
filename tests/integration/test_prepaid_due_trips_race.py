"""A deferred trip falling due while an ingest or payment of the same wallet is in flight: ``due_trips`` waits
for that transaction and decides from what it committed (PostgreSQL; SQLite has one writer at a time)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine
from test_prepaid import THURSDAY_MORNING, WALLET, WEDNESDAY_NIGHT, YUAN, setup, spend

from powergate.domain.ledger import recharge_entry
from powergate.services import prepaid
from powergate.store import ledger as ledger_store


def test_a_due_trip_waits_for_a_payment_in_flight_and_does_not_trip_the_paid_wallet(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: no transaction can be in flight beside due_trips")
    wallet_id = setup(engine, window="default")
    assert spend(engine, "r1", 25 * YUAN, WEDNESDAY_NIGHT, wallet_id) == 4  # three warnings and trip_deferred
    written: list[int] = []
    with engine.connect() as paying:
        paying.begin()  # a payment (or an ingest) of this wallet, not yet committed
        entry = recharge_entry("pay:race", WALLET, "sandbox", 30 * YUAN, THURSDAY_MORNING)
        ledger_store.post(paying, entry, THURSDAY_MORNING)
        prepaid.after_recharge(paying, WALLET, THURSDAY_MORNING)
        runner = threading.Thread(target=lambda: written.append(prepaid.due_trips(engine, THURSDAY_MORNING)))
        runner.start()
        runner.join(timeout=1.0)
        assert runner.is_alive(), "due_trips must wait for the wallet's balance, which the payment holds"
        paying.commit()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert written == [0], "the paid wallet is not tripped, and its state is not overwritten"
    with engine.connect() as conn:
        state = prepaid.wallet_state(conn, wallet_id)
        assert state is not None and state.supply_on and state.trip_due_at is None
        assert prepaid.outbox_rows(conn, "trip") == []
        assert ledger_store.audit(conn) == []
