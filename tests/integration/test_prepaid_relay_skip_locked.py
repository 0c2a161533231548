"""Concurrent outbox relays on PostgreSQL take disjoint rows (``FOR UPDATE SKIP LOCKED``) and keep each wallet's
rows in order: every row is relayed by exactly one relay, none is passed over for ever, a relay never waits for
the rows another holds, and a close never overtakes the trip it follows.

The deterministic tests stop relay A in the middle of its batch: another connection holds a meter row ``FOR
UPDATE``, so A's first command insert (whose foreign key takes a key-share lock on that meter) waits, with A's
claimed rows locked. Relay B runs meanwhile, in another thread and connection.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select, text

from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.services import prepaid
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.db import make_engine
from powergate.store.tables_prepaid import outbox
from testkit import FLAT_TARIFF, truncate_all

pytestmark = pytest.mark.postgres

YUAN = 1_000_000
TZ = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
ROWS_PER_TRIP = 4
"""A wallet spent to zero: warnings at 50, 20 and 10 yuan, and the trip."""
WAIT_S = 20.0
"""Longest wait for a relay to block, or to finish."""


@pytest.fixture
def pg(migrated_postgres_url: str) -> Iterator[Engine]:
    truncate_all(migrated_postgres_url)
    engine = make_engine(migrated_postgres_url)
    yield engine
    engine.dispose()


def tripped_wallets(engine: Engine, count: int) -> list[int]:
    """``count`` wallets W0.. with one meter M-0.. each, spent to zero: four outbox rows each, wallet by wallet."""
    ids = []
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", FLAT_TARIFF, NOON)
        for n in range(count):
            wallet_id = ledger_store.ensure_account(conn, wallet_code(f"W{n}"), NOON)
            metering.add_meter(conn, f"M-{n}", wallet_id, "flat", NOON)
            assert prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window="off"), NOON) is None
            ids.append(wallet_id)
    for n, wallet_id in enumerate(ids):
        with engine.begin() as conn:
            ledger_store.post(conn, charge_entry(f"use:{n}", wallet_code(f"W{n}"), {"energy": YUAN}, NOON), NOON)
            assert prepaid.after_ingest(conn, {wallet_id}, NOON) == ROWS_PER_TRIP
    return ids


def unprocessed(engine: Engine) -> int:
    with engine.connect() as conn:
        query = select(func.count()).where(outbox.c.kind.in_(prepaid.PROCESSED_KINDS), outbox.c.processed_at.is_(None))
        return int(conn.execute(query).scalar_one())


def lock_waiters(engine: Engine) -> int:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return int(conn.execute(text(query)).scalar_one())


def wait_until_blocked(engine: Engine, relay: Future[prepaid.Relayed]) -> None:
    deadline = time.monotonic() + WAIT_S
    while lock_waiters(engine) == 0:
        assert not relay.done(), f"relay A finished without waiting: {relay.result()}"
        assert time.monotonic() < deadline, "relay A never reached the held meter"
        time.sleep(0.02)


class MeterHold:
    """Holds one meter row ``FOR UPDATE`` on its own connection until released."""

    def __init__(self, engine: Engine, meter_id: str) -> None:
        self.conn = engine.connect()
        self.transaction = self.conn.begin()
        self.conn.execute(text("SELECT id FROM meters WHERE id = :id FOR UPDATE"), {"id": meter_id})

    def release(self) -> None:
        if self.transaction.is_active:
            self.transaction.rollback()
            self.conn.close()


def test_a_relay_takes_the_rows_another_holds_not_and_waits_for_none_of_them(pg: Engine) -> None:
    tripped_wallets(pg, 6)
    total = 6 * ROWS_PER_TRIP
    hold = MeterHold(pg, "M-0")
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            first = pool.submit(prepaid.process_outbox, pg, NOON, 2 * ROWS_PER_TRIP)  # W0 and W1's rows
            wait_until_blocked(pg, first)
            second = pool.submit(prepaid.process_outbox, pg, NOON, prepaid.MAX_RELAY_BATCH).result(WAIT_S)
            assert not first.done(), "A still holds its rows while B ran"
        finally:
            hold.release()
        a = first.result(WAIT_S)
    assert (a.rows, a.commands, a.deferred) == (2 * ROWS_PER_TRIP, 2, 0)
    assert (second.rows, second.commands, second.deferred) == (total - 2 * ROWS_PER_TRIP, 4, 0)
    assert unprocessed(pg) == 0 and prepaid.process_outbox(pg, NOON) == prepaid.Relayed()
    with pg.connect() as conn:
        attempts = conn.execute(select(outbox.c.attempts)).scalars().all()
        assert attempts == [1] * total, "each row marked once"
        for n in range(6):
            relay_commands = queue.commands_of(conn, f"M-{n}")
            assert [c.command.kind.value for c in relay_commands] == ["trip"], f"M-{n}: one trip"


def test_a_close_waits_while_another_relay_holds_the_trip_it_follows(pg: Engine) -> None:
    """W1 is tripped, then pays: its trip row sits in relay A's batch (stuck on W0's meter), its close row is
    past it. B must leave the close alone: relayed first, it would be superseded by the trip A queues later
    (a newer relay command cancels older pending ones), and the paid-up tenant would stay in the dark."""
    tripped_wallets(pg, 3)
    with pg.begin() as conn:
        ledger_store.post(conn, recharge_entry("pay:W1", wallet_code("W1"), "cash", 30 * YUAN, NOON), NOON)
        assert prepaid.after_recharge(conn, wallet_code("W1"), NOON) == 1
    hold = MeterHold(pg, "M-0")
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            first = pool.submit(prepaid.process_outbox, pg, NOON, 2 * ROWS_PER_TRIP)
            wait_until_blocked(pg, first)
            second = pool.submit(prepaid.process_outbox, pg, NOON, prepaid.MAX_RELAY_BATCH).result(WAIT_S)
        finally:
            hold.release()
        a = first.result(WAIT_S)
    assert (a.rows, a.commands) == (2 * ROWS_PER_TRIP, 2)
    assert (second.rows, second.commands, second.closes, second.deferred) == (ROWS_PER_TRIP, 1, 0, 1)
    later = prepaid.process_outbox(pg, NOON)
    assert (later.rows, later.closes, later.deferred) == (1, 1, 0), "the close goes out at the next run"
    assert unprocessed(pg) == 0
    with pg.connect() as conn:
        newest, older = queue.commands_of(conn, "M-1")
    assert newest.command.kind.value == "close" and newest.state is queue.CommandState.PENDING
    assert older.command.kind.value == "trip" and older.state is queue.CommandState.CANCELLED


def test_two_relays_racing_over_many_rows_relay_each_exactly_once(pg: Engine) -> None:
    wallets = 60
    tripped_wallets(pg, wallets)
    total = wallets * ROWS_PER_TRIP
    results: dict[str, list[prepaid.Relayed]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def relay(name: str) -> None:
        own = make_engine(pg.url.render_as_string(hide_password=False))
        try:
            barrier.wait(WAIT_S)
            for _ in range(total):  # bounded: each productive run takes at least one row
                done = prepaid.process_outbox(own, NOON, 7)
                results[name].append(done)
                if done.rows == 0 and done.deferred == 0:
                    return
        finally:
            own.dispose()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(relay, "a"), pool.submit(relay, "b")]:
            future.result(4 * WAIT_S)
    rows = {name: sum(r.rows for r in runs) for name, runs in results.items()}
    commands = sum(r.commands for runs in results.values() for r in runs)
    assert rows["a"] + rows["b"] == total, f"each row relayed by exactly one relay: {rows}"
    assert commands == wallets
    assert unprocessed(pg) == 0, "no row passed over for ever"
    with pg.connect() as conn:
        assert conn.execute(select(outbox.c.attempts).distinct()).scalars().all() == [1]
